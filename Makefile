# The two set-up commands: `make run` (the main job) and `make test` (lint + the whole test suite).
# Both create .venv if missing and install edgepack with its toolchain and dev extras into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= $(if $(EDGEPACK_DATA),$(EDGEPACK_DATA),../shared/data/cifar-10-python.tar.gz)
OUT ?= runs/baseline
PYTEST_ARGS ?=

.PHONY: run test lint venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[toolchain,dev]"
	touch $@

venv: $(VENV)/.installed

run: venv
	$(BIN)/edgepack train --data $(DATA) --out $(OUT) --force

lint: venv
	$(BIN)/ruff check edgepack tests examples

test: lint
	EDGEPACK_DATA=$(DATA) $(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-runtime .pytest_cache .ruff_cache
