# Tandem: `make setup` once, then `make up` (local stack, no Docker) or `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export TANDEM_HOME ?= $(CURDIR)/.tandem
# `make test` runs the suite in this many processes (pytest-xdist; a test file stays in one process)
TEST_WORKERS ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help setup models redis up down status logs test bench-knowledge bench-behavior bench-serve bench-batching bench-stack demo screenshots clean-state

help:
	@echo "make setup            create .venv, install exact pins, prepare the models (idempotent)"
	@echo "make up|down|status|logs   the local stack: Postgres+pgvector, MLflow, Airflow 3"
	@echo "                       (TANDEM_EXECUTOR=celery TANDEM_WORKERS=2 make up: Celery workers, needs redis-server)"
	@echo "make test             the test suite (real Postgres, MLflow, Airflow and models)"
	@echo "make demo             the whole story on real DAG runs (DEMO_ARGS=--fast: the CI slice; --reset)"
	@echo "make screenshots      README screenshots of the running stack (headless Chromium)"
	@echo "make bench-knowledge | bench-behavior | bench-serve | bench-batching | bench-stack   benchmarks (print figures)"

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The stamp re-runs the install when a requirements file changes.
$(VENV)/.installed: requirements.txt requirements-runtime.txt requirements-nodeps.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed models

models: $(VENV)/.installed
	$(BIN)/python -m tandem.setup_models

up: setup
	$(BIN)/python -m tandem.stack up

down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m tandem.stack down; else echo "nothing installed, nothing running"; fi

status:
	$(BIN)/python -m tandem.stack status

logs:
	$(BIN)/python -m tandem.stack logs

# The multi-worker tests (TANDEM_EXECUTOR=celery) need Debian's redis-server: installed here when missing.
redis:
	@command -v redis-server >/dev/null 2>&1 || { echo "installing redis-server (Debian package)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null; fi; }

test: setup redis
	$(BIN)/python -m pytest -q --durations=30 -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

# The peers the benchmarks run beside Tandem (LlamaIndex's PGVectorStore and HuggingFaceEmbedding).
$(VENV)/.bench-installed: benchmarks/requirements.txt benchmarks/requirements-readers.txt $(VENV)/.installed
	$(BIN)/pip install -q -r benchmarks/requirements.txt
	$(BIN)/pip install -q --no-deps -r benchmarks/requirements-readers.txt
	touch $@

bench-knowledge: setup $(VENV)/.bench-installed
	$(BIN)/python benchmarks/bench_knowledge.py $(BENCH_ARGS)

bench-behavior: setup
	$(BIN)/python benchmarks/bench_eval.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_retrain.py $(BENCH_ARGS)

bench-serve: setup
	$(BIN)/python benchmarks/bench_serve.py $(BENCH_ARGS)

bench-batching: setup
	$(BIN)/python benchmarks/bench_batching.py $(BENCH_ARGS)

bench-stack: setup redis
	$(BIN)/python benchmarks/bench_stack.py $(BENCH_ARGS)

demo: setup
	$(BIN)/python -m tandem.demo.run $(DEMO_ARGS)

screenshots: setup
	$(BIN)/python docs/screenshots.py

clean-state: down
	rm -rf "$(TANDEM_HOME)"
