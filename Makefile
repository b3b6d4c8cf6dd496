# beear-release: two commands on a fresh machine.
#   make demo   the main job: the `tiny` deployment end to end (local Prefect + MLflow, a zoo model)
#   make test   the test suite (the same command CI runs)
# Both create or reuse .venv. On CPU machines torch comes from `pip install torch==2.13.0` (a local
# CPU wheel); any other specifier would pull several GB of CUDA packages.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1

.PHONY: demo test venv lint bench-zoo clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff format --check beear_stage tasks flows tests
	$(VENV)/bin/ruff check beear_stage tasks flows tests

demo: $(STAMP)
	$(PY) -m flows.demo

bench-zoo: $(STAMP)
	$(PY) -m beear_stage.bench zoo --out runs/bench/zoo.json

clean:
	rm -rf runs .cache
