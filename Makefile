# Every target bootstraps what it needs on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# What a build reads: a new C source under sharedarray/ext/ needs no change here.
SOURCES = pyproject.toml setup.py MANIFEST.in $(wildcard sharedarray/ext/*.c sharedarray/ext/*.h)
# What a (non-editable) install copies besides.
PACKAGE = $(SOURCES) $(wildcard sharedarray/*.py sharedarray/*.pyi) sharedarray/py.typed
# Extra pytest arguments, e.g. PYTEST_ARGS='-m "not slow"' for a quicker local run.
PYTEST_ARGS ?=

.PHONY: demo test lint test-matrix test-py310-np124 test-py313 ci bench clean

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
	$(BIN)/python -m pytest -n auto tests $(PYTEST_ARGS)

# ruff and mypy (configured in pyproject.toml), and the C extension's stub
# checked against the built module.  The test extra too: mypy reads the
# tests' conftest.py, which imports pytest.
lint: $(VENV)/.installed-test,lint
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest --mypy-config-file pyproject.toml \
	  --allowlist tools/stubtest-allowlist.txt sharedarray._ext

# ------------------------------------------------------------------ matrix
# The floor (Python 3.10 + numpy 1.24) and the newest (Python 3.13 + the
# newest numpy), each in a venv of its own with a regular (non-editable)
# install, so that these runs also test the package as users get it.
# Interpreters come from pyenv, or from PYTHON310= / PYTHON313=.
PYENV_ROOT ?= $(or $(shell pyenv root 2>/dev/null),$(HOME)/.pyenv)
find_python = $(or $(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/$(1).*/bin/python))),$(shell command -v python$(1) 2>/dev/null))
PYTHON310 ?= $(call find_python,3.10)
PYTHON313 ?= $(call find_python,3.13)
# test_pool_cpython.py runs CPython 3.13's executor tests in a 3.13 venv of its
# own whatever runs pytest: once, in `make test`, is enough.
MATRIX_PYTEST = -m pytest -n auto tests --deselect tests/test_pool_cpython.py

test-matrix: test-py310-np124 test-py313

.venv-py310-np124/.installed: $(PACKAGE)
	@test -n "$(PYTHON310)" || { echo "no Python 3.10: looked in $(PYENV_ROOT)/versions/3.10.*" \
	  "and for python3.10 on PATH; set PYTHON310=/path/to/python3.10" >&2; exit 1; }
	test -x .venv-py310-np124/bin/python || $(PYTHON310) -m venv .venv-py310-np124
	.venv-py310-np124/bin/python -m pip install -q --upgrade pip
	.venv-py310-np124/bin/python -m pip install -q '.[test]' 'numpy==1.24.*'
	touch $@

test-py310-np124: .venv-py310-np124/.installed
	.venv-py310-np124/bin/python $(MATRIX_PYTEST) $(PYTEST_ARGS)

.venv-py313/.installed: $(PACKAGE)
	@test -n "$(PYTHON313)" || { echo "no Python 3.13: looked in $(PYENV_ROOT)/versions/3.13.*" \
	  "and for python3.13 on PATH; set PYTHON313=/path/to/python3.13" >&2; exit 1; }
	test -x .venv-py313/bin/python || $(PYTHON313) -m venv .venv-py313
	.venv-py313/bin/python -m pip install -q --upgrade pip
	.venv-py313/bin/python -m pip install -q --upgrade '.[test]' numpy
	touch $@

# DeprecationWarnings are errors on the newest interpreter: pytest's -W, which
# its xdist workers get too (python's own -W would stay in the controller).
# The one 3.12+ gives when a multi-threaded process forks can never fail a
# test (CPython drops it when it is an error); test_pool.py's
# test_no_thread_of_ours_when_a_process_forks checks our threads instead.
test-py313: .venv-py313/.installed
	.venv-py313/bin/python $(MATRIX_PYTEST) -W error::DeprecationWarning $(PYTEST_ARGS)

# What CI runs (.ci/run): lint, the suite, the matrix; C warnings are errors.
# -k: every interpreter of the matrix runs even when one of them fails.
ci: export SHAREDARRAY_WERROR = 1
ci:
	$(MAKE) lint
	$(MAKE) test
	$(MAKE) -k test-matrix

# `make bench BENCHFLAGS=--quick` for a one-minute smoke run.
bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/run.py $(BENCHFLAGS)

clean:
	rm -rf $(VENV) .venv-py310-np124 .venv-py313 build dist *.egg-info sharedarray/*.so
