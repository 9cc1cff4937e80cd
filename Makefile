# The two quick-start commands are `make demo` and `make test`; everything else is for developers.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test
PYTEST_ARGS ?=

.PHONY: install demo test test-deps lint format bench screenshots clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet -e .
	touch $@

$(TSTAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[test]'
	touch $@ $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/clustertui --demo

test-deps:
	bash tests/install-components.sh

test: $(TSTAMP) test-deps
	$(PY) -m pytest -n auto --dist loadgroup $(PYTEST_ARGS)

lint: $(TSTAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(TSTAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(TSTAMP) test-deps
	$(PY) -m bench

screenshots: $(TSTAMP)
	$(PY) -m screenshots

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
