# Every target bootstraps .venv on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SOURCES = pyproject.toml setup.py $(wildcard sharedarray/ext/*.c sharedarray/ext/*.h)

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Editable install: the C extension is rebuilt when its sources change.
$(VENV)/.installed-%: $(BIN)/python $(SOURCES)
	$(BIN)/python -m pip install -q -e '.[$*]'
	touch $@

# The demo needs only the package itself.
$(VENV)/.installed: $(BIN)/python $(SOURCES)
	$(BIN)/python -m pip install -q -e .
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m sharedarray demo

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n auto tests

# `make bench BENCHFLAGS=--quick` for a one-minute smoke run.
bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/run.py $(BENCHFLAGS)

clean:
	rm -rf $(VENV) build *.egg-info sharedarray/*.so
