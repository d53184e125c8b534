# Two commands a user needs: `make demo` and `make test`. Both build .venv on first use.
# `make bench` measures against the peers (docs/PERFORMANCE.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# img2dataset imports albumentations, which would otherwise check PyPI for updates on import.
export NO_ALBUMENTATIONS_UPDATE := 1
# The stamp is named after pyproject's hash, so editing dependencies re-installs.
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: venv test lint demo bench clean-venv

venv: $(STAMP)

# torch comes from the local CPU wheel (pip finds it; an unpinned torch would pull gigabytes of
# CUDA packages); uv then installs the rest in parallel (~25 s instead of ~3 min with pip) and
# keeps that torch, since 2.13.0 satisfies pyproject's range. --compile-bytecode writes the .pyc files
# pip would (uv does not by default): where PYTHONDONTWRITEBYTECODE is set, as on this project's
# machines, every Ray worker and subprocess would otherwise compile ray, transformers, mlflow... from
# source on each start.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0 "uv>=0.5,<1"
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/uv pip install -q --compile-bytecode -e ".[test]"
	rm -f $(VENV)/.installed-* && touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

# The whole chain on generated data: sample videos served on loopback -> ingest -> features ->
# VL stage 1 (tiny) -> captions of held-out videos; everything under demo-output/, reused on re-runs.
demo: $(STAMP)
	$(BIN)/vllama demo $(DEMO_ARGS)

# The runner sets up the rest itself: video2dataset's own venv (benchmarks/.peer-venv, built once),
# the generated inputs (cached under benchmarks/work/). Then every section (WebVid and CC3M ingestion
# against their peers and limits, feature extraction and reuse, the training step cached vs on the
# fly; under 20 minutes on 2 cores), the plots and the doc's tables.
# BENCH_ARGS="--only ingest_webvid" runs one section; "--quick" checks the machinery.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
