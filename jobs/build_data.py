"""`python jobs/build_data.py ARGS` is `lare-build-data ARGS`: the job lives in lare/jobs/build_data.py; this file stays so that
`ray job submit --working-dir . -- python jobs/build_data.py ...` works on any cluster whose image has the project installed."""

from lare.jobs.build_data import run

if __name__ == "__main__":
    run()
