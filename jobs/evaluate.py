"""`python jobs/evaluate.py ARGS` is `lare-evaluate ARGS`: the job lives in lare/jobs/evaluate.py; this file stays so that
`ray job submit --working-dir . -- python jobs/evaluate.py ...` works on any cluster whose image has the project installed."""

from lare.jobs.evaluate import run

if __name__ == "__main__":
    run()
