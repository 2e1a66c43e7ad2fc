"""`python jobs/demo.py ARGS` is `lare-demo ARGS`: the job lives in lare/jobs/demo.py; this file stays so that
`ray job submit --working-dir . -- python jobs/demo.py ...` works on any cluster whose image has the project installed."""

from lare.jobs.demo import run

if __name__ == "__main__":
    run()
