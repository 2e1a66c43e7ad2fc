"""`python jobs/tune.py ARGS` is `lare-tune ARGS`: the job lives in lare/jobs/tune.py; this file stays so that
`ray job submit --working-dir . -- python jobs/tune.py ...` works on any cluster whose image has the project installed."""

from lare.jobs.tune import run

if __name__ == "__main__":
    run()
