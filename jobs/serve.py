"""`python jobs/serve.py ARGS` is `lare-serve ARGS`: the job lives in lare/jobs/serve.py; this file stays so that
`ray job submit --working-dir . -- python jobs/serve.py ...` works on any cluster whose image has the project installed."""

from lare.jobs.serve import run

if __name__ == "__main__":
    run()
