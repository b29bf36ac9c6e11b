# Tandem: every target sets itself up. On a fresh machine `make run` and `make test` are all you need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
VENV := .venv
STAMP := $(VENV)/.synced
PY := $(VENV)/bin/python
TANDEM := $(VENV)/bin/tandem
# Compile bytecode at install time: some environments set PYTHONDONTWRITEBYTECODE, and torch +
# transformers then re-parse every import (≈30 s per process instead of ≈5 s).
export UV_COMPILE_BYTECODE := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: help setup browser redis engines level1-sweep generality run demo test test-all lint format typecheck bench bench-llm bench-chat bench-first-run loadtest soak fuzz bench-fairness index clean

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(UV):
	@echo "uv not found: installing it with pip"
	python3 -m pip install --user --quiet uv

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv from uv.lock (torch/torchvision from PyPI through uv)

run: setup ## Convert the base LLM, index what is missing, serve the web chat + API on :8000 (trains nothing)
	$(TANDEM) serve --prepare $(if $(LIMIT),--limit $(LIMIT),) $(if $(HOST),--host $(HOST),) $(if $(PORT),--port $(PORT),)

demo: setup ## Terminal demo: index, then answer a text and a photo query
	$(TANDEM) demo $(if $(LIMIT),--limit $(LIMIT),)

index: setup ## Index the catalogue (TANDEM_CATALOGUE__PATH, default ../shared/data/fashion)
	$(TANDEM) index

browser: ## Debian's chromium for the browser tests (apt-get, only when missing)
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" -ne 0 ] && command -v sudo || true ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null \
	  || echo "could not install chromium: the browser tests will be skipped"; }

redis: ## Debian's redis-server for the session-store tests (apt-get, only when missing)
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing Debian's redis-server for the session-store tests (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" -ne 0 ] && command -v sudo || true ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null \
	  || echo "could not install redis-server: the Redis tests will be skipped"; }

# llama.cpp's OpenAI-compatible server, built from source into its own venv (≈20 min on 2 cores). Optional: only
# `make bench-llm` uses it, for the real-engine row. The native build segfaults on this CPU's AVX-512/AMX path.
LLAMA_VENV := var/llama-venv
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
engines: | $(UV) ## Optional: build llama.cpp's server (llama-cpp-python[server]) for bench-llm's real-engine row (≈20 min)
	@test -x $(LLAMA_VENV)/bin/python || $(UV) venv --quiet --python 3.11 $(LLAMA_VENV)
	@$(LLAMA_VENV)/bin/python -c "import llama_cpp.server" 2>/dev/null || \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(UV) pip install --no-config --python $(LLAMA_VENV)/bin/python "llama-cpp-python[server]>=0.3"

test: setup browser redis ## Lint, type-check, check the layer contract and run the test suite (slow and gpu tests deselected)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

test-all: setup browser redis ## Run every test, slow ones included (gpu ones skip without a GPU)
	$(PY) -m pytest -m "slow or not slow"

lint: setup ## ruff lint, format check and the layer contract (import-linter)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff format --check .

format: setup ## Apply ruff formatting and safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: setup ## mypy
	$(VENV)/bin/mypy

bench: setup ## Benchmarks: indexing throughput, query latency, Qdrant Edge vs NumPy (eval/reports/)
	$(TANDEM) bench

bench-llm: setup ## LLM serving: balancing policies under rising load, faults (eval/reports/llm_serving.*; QUICK=1)
	$(TANDEM) bench llm $(if $(QUICK),--quick,)

bench-chat: setup ## Chat latency: first product card and first explanation token, p50/p95 (eval/reports/chat_latency.*)
	$(TANDEM) bench chat $(if $(TURNS),--turns $(TURNS),) $(if $(ROUNDS),--rounds $(ROUNDS),)

bench-first-run: setup ## A fresh clone's `make run`, timed stage by stage until the chat answers (eval/reports/first_run.*)
	$(PY) -m eval.bench_first_run

loadtest: setup ## Locust load test of the API beside the raw encoder (eval/reports/api_loadtest.*; QUICK=1)
	$(TANDEM) bench loadtest $(if $(QUICK),--quick,) $(if $(LIMIT),--index-limit $(LIMIT),)

bench-fairness: setup ## Per-key fairness: key B's p95 alone and while key A floods (eval/reports/fairness.*, reliability.*)
	$(TANDEM) bench fairness

soak: setup ## 30 minutes of mixed traffic at half capacity: memory, descriptors, latency per minute (eval/reports/soak.*, reliability.*; MINUTES=N)
	$(TANDEM) bench soak $(if $(MINUTES),--minutes $(MINUTES),)

fuzz: setup ## Schemathesis against every operation of the API and the worker, long run (eval/reports/fuzz.*, reliability.*; EXAMPLES=N)
	$(TANDEM) bench fuzz $(if $(EXAMPLES),--examples $(EXAMPLES),)

level1-sweep: setup ## Level 1 of hierarchical search: tune on half the buyer-style photo queries, report on the other half (eval/reports/level1_sweep.*)
	@test -f var/eval/queries/products.csv || $(TANDEM) eval make-queries --out var/eval/queries --n 1000
	$(TANDEM) eval level1-sweep --report-dir eval/reports

generality: setup ## A SIMULATED second catalogue: tower budget, warm start, exact-product stage, unseen categories (eval/reports/catalogue_generality.*)
	$(TANDEM) eval generality --fresh

clean: ## Remove the virtual environment (keeps TANDEM_HOME data)
	rm -rf $(VENV)
