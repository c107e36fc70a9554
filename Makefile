# Two entry points (README): `make demo` runs the pipeline on the bundled example,
# `make test` runs the tests. Both install what they need into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export NO_ALBUMENTATIONS_UPDATE := 1
export DVC_NO_ANALYTICS := 1

.PHONY: install demo test lint bench

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0 uv==0.13.9
	# uv resolves and downloads the rest in parallel (pip took over two minutes) and keeps that torch; compiled
	# bytecode, as pip writes it: every import (CLI, Prefect server, evaluate workers) would compile sources again.
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/uv pip install -q --compile-bytecode -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/synthaug run

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) -m bench
