# Entry points (README): `make demo` runs the pipeline on the bundled example; `make test` runs the fast tier of the
# tests (before every commit), `make test-full` all of them (CI). Each installs what it needs into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export NO_ALBUMENTATIONS_UPDATE := 1
export DVC_NO_ANALYTICS := 1

.PHONY: install demo test test-full lint bench

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

# The tiers are pytest markers (tests/markers.py): the fast tier leaves out slow, integration, browser and dicom tests.
FAST := not slow and not integration and not browser and not dicom
# Test processes (pytest-xdist); tests use one torch thread each, so one process per core. Tests sharing an expensive
# session fixture (the Prefect server, the evaluated tiny workdir) carry one xdist_group and run in one process;
# groups start in the order tests/conftest.py gives them (the longest first), not xdist's.
WORKERS ?= $(shell nproc)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(VENV)/bin/pytest -q -n $(WORKERS) --dist loadgroup --no-loadscope-reorder -m "$(FAST)"

test-full: lint
	$(VENV)/bin/pytest -q -n $(WORKERS) --dist loadgroup --no-loadscope-reorder

bench: $(STAMP)
	$(PY) -m bench
