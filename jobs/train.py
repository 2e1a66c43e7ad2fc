"""`python jobs/train.py ARGS` is `lare-train ARGS`: the job lives in lare/jobs/train.py; this file stays so that
`ray job submit --working-dir . -- python jobs/train.py ...` works on any cluster whose image has the project installed."""

from lare.jobs.train import run

if __name__ == "__main__":
    run()
