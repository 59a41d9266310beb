# tlbreplay: the front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY ?= python3
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out

.PHONY: help setup system-deps test test-fast lint format bench pipeline clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.tools/bin/uv:
	$(PY) -m pip install --quiet --disable-pip-version-check --target .tools uv==$(UV_VERSION)

$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PY)
	touch $@

setup: $(VENV)/.installed ## create .venv from the lock file (uv sync --frozen)

system-deps: ## Debian packages used by optional tests (trace-cmd for trace.dat, chromium for the report)
	command -v trace-cmd >/dev/null && command -v chromium >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq trace-cmd chromium >/dev/null; }

test: setup ## set up, then run the whole test suite
	$(BIN)/pytest -q

test-fast: setup ## the test suite without tests marked slow
	$(BIN)/pytest -q -m "not slow"

lint: setup ## ruff (lint + format check) and mypy --strict on pipeline/
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/ruff format --check pipeline tests bench
	$(BIN)/mypy

format: setup ## apply ruff format and safe fixes
	$(BIN)/ruff format pipeline tests bench
	$(BIN)/ruff check --fix pipeline tests bench

bench: setup ## run the benchmarks in bench/ and print the figures
	$(BIN)/python -m bench

clean: ## remove outputs (not the venv)
	rm -rf $(OUT)
