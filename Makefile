# facerec: `make run` serves on 127.0.0.1:8000, `make test` runs the whole suite. Both install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev

.PHONY: install models run test lint proto bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml changes; uv makes a fresh install take seconds.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv>=0.4"
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

models: install
	$(BIN)/facerec models

run: models
	$(BIN)/facerec serve

test: models
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check server tests bench tooling
	$(BIN)/mypy server tooling

proto: install
	$(BIN)/python scripts/gen_proto.py

bench: models
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e ".[dev,bench]"
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) model_repository/*/1 model_repository/.build.json .pytest_cache .mypy_cache .ruff_cache
