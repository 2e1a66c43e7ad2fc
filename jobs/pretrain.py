"""`python jobs/pretrain.py ARGS` is `lare-pretrain ARGS`: the job lives in lare/jobs/pretrain.py; this file stays so that
`ray job submit --working-dir . -- python jobs/pretrain.py ...` works on any cluster whose image has the project installed."""

from lare.jobs.pretrain import run

if __name__ == "__main__":
    run()
