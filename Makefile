# `make sweep` and `make test` set everything up in .venv/ on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SPEC ?=
ARGS ?=  # e.g. make sweep ARGS=--verbose

.PHONY: sweep test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) tools/install.py -e '.[dev]'
	touch $(STAMP)

sweep: $(STAMP)
	$(PY) -m orchestrator.sweep $(SPEC) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs prepared
