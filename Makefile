# One way to do each thing. `make demo` runs the main job end to end; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0

.PHONY: install test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first and pinned: the CPU wheel on this disk (a bare `torch` would pull a multi-GB CUDA build).
install: $(PY)
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"

test: install
	$(PY) -m pytest -q

clean:
	rm -rf .pytest_cache build *.egg-info
