# The two quick-start commands are `make demo` and `make test`; everything else is for developers.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test
PYTEST_ARGS ?=
SHELL  := /bin/bash
# What pip is doing, one line per package, instead of 20 silent seconds.
PROGRESS := grep --line-buffered -E '^(Collecting|Installing collected|Successfully installed)' | sed -u 's/^/  /'

.PHONY: install demo test test-deps lint format bench screenshots clean

$(PY):
	@echo "make: creating the virtual environment $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	@echo "make: installing clustertui and its dependencies into $(VENV) (once, about 20 s)"
	@set -o pipefail; $(PIP) install -e . 2>&1 | $(PROGRESS)
	@touch $@
	@echo "make: installed"

$(TSTAMP): pyproject.toml | $(PY)
	@echo "make: installing clustertui with its test tools into $(VENV) (once)"
	@set -o pipefail; $(PIP) install -e '.[test]' 2>&1 | $(PROGRESS)
	@touch $@ $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/clustertui --demo

test-deps:
	bash tests/install-components.sh

test: $(TSTAMP) test-deps lint
	$(PY) -m pytest -n auto --dist loadgroup $(PYTEST_ARGS)

# mypy reads the project as it is installed, clustertui.backend etc.; it cannot follow the
# editable install's import hook, so it reads the folders through a link tree under build/.
lint: $(TSTAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@mkdir -p build/typecheck/clustertui
	@for layer in backend console widgets; do ln -sfn ../../../$$layer build/typecheck/clustertui/$$layer; done
	$(VENV)/bin/mypy

format: $(TSTAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(TSTAMP) test-deps
	$(PY) -m bench

screenshots: $(TSTAMP)
	$(PY) -m screenshots

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
