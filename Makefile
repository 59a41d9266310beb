# tlbreplay: the front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY ?= python3
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out

.PHONY: help setup system-deps test test-fast lint format bench pipeline rfc-boot clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.tools/bin/uv:
	$(PY) -m pip install --quiet --disable-pip-version-check --target .tools uv==$(UV_VERSION)

$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PY)
	touch $@

# bytecode of the installed packages, once: with PYTHONDONTWRITEBYTECODE set Python reads .pyc
# files but never writes them, and every CLI start would compile polars & co. (~2 CPU-s)
$(VENV)/.compiled: $(VENV)/.installed
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null
	touch $@

# and of the project's own modules (~0.1 CPU-s of every command, a third of `query`'s start,
# ADR 0421); after an edit a stale .pyc is only ignored until the next `make setup`
$(VENV)/.compiled-src: $(shell find pipeline tlbreplay -name '*.py' 2>/dev/null) | $(VENV)/.installed
	$(BIN)/python -m compileall -q pipeline tlbreplay >/dev/null
	touch $@

setup: $(VENV)/.installed $(VENV)/.compiled $(VENV)/.compiled-src pipeline/ingest/_ftrace_scan.so pipeline/replay/_intervals.so ## create .venv from the lock file (uv sync --frozen), build the ingest scanner and the replay's interval kernels

pipeline/ingest/_ftrace_scan.so: csrc/ftrace_scan.c
	gcc -O2 -std=c99 -shared -fPIC -Wall -Wextra -Werror -o $@ $<

pipeline/replay/_intervals.so: csrc/intervals.c
	gcc -O2 -std=c99 -shared -fPIC -Wall -Wextra -Werror -o $@ $<

system-deps: ## Debian packages used by optional tests (trace-cmd for trace.dat, chromium for the report)
	command -v trace-cmd >/dev/null && command -v chromium >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq trace-cmd chromium >/dev/null; }

test: setup ## set up, then run the whole test suite
	$(BIN)/pytest -q

test-fast: setup ## the test suite without tests marked slow
	$(BIN)/pytest -q -m "not slow"

lint: setup ## ruff (lint + format check) and mypy --strict on pipeline/
	$(BIN)/ruff check pipeline tlbreplay tests bench
	$(BIN)/ruff format --check pipeline tlbreplay tests bench
	$(BIN)/mypy

format: setup ## apply ruff format and safe fixes
	$(BIN)/ruff format pipeline tlbreplay tests bench
	$(BIN)/ruff check --fix pipeline tlbreplay tests bench

bench: setup ## run the benchmarks in bench/ and print the figures
	$(BIN)/python -m bench
	$(BIN)/python -m bench.readme_perf README.md

# ---- make pipeline: the default data end to end (docs/analysis.md) --------------------------
# Every stage output is a file target (its manifest.json), rebuilt only when its input or the
# sources of its stage changed; the stages run in parallel across datasets.
SPECS ?= vfio-pinned no-device mixed
REAL_NAMES := $(patsubst traces/real/%.trace.zst,%,$(wildcard traces/real/*.trace.zst))
DATASETS := $(SPECS) $(addprefix real-,$(REAL_NAMES))
RESULTS := $(addprefix $(OUT)/results/,$(DATASETS))
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
SCHEMA_SRC := pipeline/schema.py pipeline/errors.py $(wildcard schemas/*.toml schemas/ftrace/*.toml)
MODEL_SRC := $(SCHEMA_SRC) $(shell find pipeline/model -name '*.py' 2>/dev/null)
INGEST_SRC := $(MODEL_SRC) $(shell find pipeline/ingest -name '*.py' 2>/dev/null)
SYNTH_SRC := $(MODEL_SRC) $(shell find pipeline/synth -name '*.py' 2>/dev/null)
REPLAY_SRC := $(MODEL_SRC) $(shell find pipeline/replay -name '*.py' 2>/dev/null)
ANALYZE_SRC := $(INGEST_SRC) $(REPLAY_SRC) $(shell find pipeline/analyze -name '*.py' -o -name '*.sql' 2>/dev/null)

$(OUT)/datasets/%/manifest.json: traces/%.toml $(SYNTH_SRC) | $(VENV)/.installed
	$(BIN)/tlbreplay synth $< --out $(@D) --quiet

.SECONDEXPANSION:
$(OUT)/datasets/real-%/manifest.json: traces/real/%.trace.zst traces/real/%.toml $$(wildcard traces/real/$$*.capture.json) $(INGEST_SRC) | $(VENV)/.installed
	$(BIN)/tlbreplay ingest $< --out $(@D) --vm-config traces/real/$*.toml --quiet

$(OUT)/results/%/manifest.json: $(OUT)/datasets/%/manifest.json $(REPLAY_SRC) | $(VENV)/.installed
	$(BIN)/tlbreplay replay $(<D) --out $(@D) --quiet

# a lab capture is replayed with its sidecar's [lab] workload, built by calibrate (ADR 0381)
LAB_WORKLOAD_SRC := $(INGEST_SRC) $(wildcard pipeline/analyze/calibrate*.py pipeline/analyze/observed_events.py)
$(OUT)/results/real-%/manifest.json: $(OUT)/datasets/real-%/manifest.json traces/real/%.toml $(REPLAY_SRC) $(LAB_WORKLOAD_SRC) | $(VENV)/.installed
	$(BIN)/tlbreplay replay $(<D) --out $(@D) --quiet

$(OUT)/report/report.html: $(addsuffix /manifest.json,$(RESULTS)) $(ANALYZE_SRC) | $(VENV)/.installed
	$(BIN)/tlbreplay report $(RESULTS) --out $(@D) --quiet

# The README's generated tables (results of the sample specs, calibration of the lab cells):
# computed when an input changed, written into README.md's marked blocks on every run.
# Its inputs only (the specs' RESULTS, the captures' DATASETs), so it runs beside the other
# replays instead of after them (ADR 0426).
README_INPUTS := $(addprefix $(OUT)/results/,$(SPECS)) $(addprefix $(OUT)/datasets/real-,$(REAL_NAMES))
$(OUT)/readme.json: $(addsuffix /manifest.json,$(README_INPUTS)) $(ANALYZE_SRC) traces/real/regimes/HELDOUT.json traces/real/regimes2/HELDOUT.json | $(VENV)/.installed
	$(BIN)/python -m pipeline.analyze.readme_tables README.md --out $(OUT) --save $@

# the verdict is a file too: a warm `make pipeline` runs no query (issue 13); the report
# writes the same lines as `tlbreplay verdict $(RESULTS)` from its sections (ADR 0426)
$(OUT)/verdict.txt: $(OUT)/report/report.html
	@cp $(OUT)/report/verdict.txt $@.tmp && mv $@.tmp $@ || { rm -f $@.tmp; exit 1; }

.SECONDARY: $(addsuffix /manifest.json,$(RESULTS) $(addprefix $(OUT)/datasets/,$(DATASETS)))

pipeline: setup ## synth traces/*.toml samples + ingest traces/real/, replay every policy, report
	@$(MAKE) --no-print-directory -j$(JOBS) $(OUT)/readme.json $(OUT)/report/report.html $(OUT)/verdict.txt
	@$(BIN)/python -m pipeline.analyze.readme_tables README.md --load $(OUT)/readme.json
	@cat $(OUT)/verdict.txt
	@echo "report: $(OUT)/report/report.html"

# ---- make rfc-boot: Yan Zhao's boot tables (issue 12, ADR 0210) -------------------------------
# Ten seeds of traces/rfc-boot.toml without and with an assigned device, as one sweep, and
# the report whose "The RFC thread's numbers" part compares them with her tables. Not in
# `make pipeline` (60 replays of a 60 s boot: a few minutes on 2 cores).
RFC_OUT := $(OUT)/rfc-boot

$(RFC_OUT)/seeds/manifest.json: traces/rfc-boot.toml traces/grids/rfc-boot-seeds.toml $(INGEST_SRC) $(REPLAY_SRC) | $(VENV)/.installed
	rm -rf $(@D)
	$(BIN)/tlbreplay sweep $< --grid traces/grids/rfc-boot-seeds.toml --out $(@D) --quiet

$(RFC_OUT)/report/report.html: $(RFC_OUT)/seeds/manifest.json $(ANALYZE_SRC) | $(VENV)/.installed
	$(BIN)/tlbreplay report $(<D) --out $(@D) --quiet

rfc-boot: setup ## Yan Zhao's boot tables: traces/rfc-boot.toml, 10 seeds x {no device, assigned}, report
	@$(MAKE) --no-print-directory $(RFC_OUT)/report/report.html
	@echo "wrote $(RFC_OUT)/report/report.html"

clean: ## remove outputs (not the venv)
	rm -rf $(OUT)
