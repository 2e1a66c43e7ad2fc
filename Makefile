# One way to do each thing. `make demo` runs the main job end to end; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/qwen2.5-vl-7b.yaml
STACK := $(PY) infra/local/stack.py
export OMP_NUM_THREADS ?= 1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export TOKENIZERS_PARALLELISM ?= false

MODEL ?=
DATA_ROOT ?= data/benchmarks
EVAL_ARGS ?=

.PHONY: install demo test bench eval up down status k8s-check dry-run clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first and pinned: the CPU wheel on this disk (a bare `torch` would pull a multi-GB CUDA build).
install: $(PY)
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev,serve]"

# Builds the refocus traces, trains the tiny default with Ray Train, evaluates on the test split, prints
# the result table and the MLflow UI command. Ray is started on 127.0.0.1 and shut down at the end.
demo: install
	$(PY) jobs/demo.py

test: install
	$(PY) -m pytest -q

# Speed benchmarks (CPU); each prints a table and writes bench/results/*.json.
bench: install
	$(PY) bench/latent_cost.py
	$(PY) bench/data_throughput.py
	$(PY) bench/train_throughput.py

# make eval MODEL=runs:/<run id>/model DATA_ROOT=/data/benchmarks EVAL_ARGS="--limit 200"
eval: install
	$(PY) jobs/evaluate.py --model $(MODEL) --data-root $(DATA_ROOT) $(EVAL_ARGS)

# The local stack on 127.0.0.1: Ray head, MLflow server, S3 endpoint (docs/infra.md).
up: install
	$(STACK) up
down:
	$(STACK) down
status:
	$(STACK) status

k8s-check:
	$(PY) infra/k8s/check.py

dry-run:
	$(PY) jobs/train.py --dry-run --config $(CONFIG)

clean:
	rm -rf .pytest_cache build *.egg-info
