# facerec: `make run` serves on 127.0.0.1:8000, `make test` runs the whole suite. Both install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev

.PHONY: install install-gpu models run test lint proto lock bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml changes; uv makes a fresh install take seconds.
$(STAMP): pyproject.toml clients/python/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv>=0.4"
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e ".[$(EXTRAS)]" -e ./clients/python
	touch $(STAMP)

install: $(STAMP)

# A CUDA machine: swap the CPU onnxruntime wheel for the CUDA 12 + cuDNN 9 build (same module; CPU one out first).
ORT_GPU_VERSION ?= 1.26.0
install-gpu: install
	$(BIN)/uv pip uninstall --python $(BIN)/python onnxruntime
	$(BIN)/uv pip install --python $(BIN)/python "onnxruntime-gpu==$(ORT_GPU_VERSION)"
	$(BIN)/python -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers(), o.get_available_providers()"

models: install
	$(BIN)/facerec models

run: models
	$(BIN)/facerec serve

test: models
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check server tests bench tooling clients
	$(BIN)/mypy server tooling clients/python/facerec_client

proto: install
	$(BIN)/python scripts/gen_proto.py

# uv.lock pins every dependency for the Docker images (uv sync --frozen); re-run after editing pyproject.toml.
lock: install
	$(BIN)/uv lock

bench: models
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e ".[dev,bench]"
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) model_repository/*/1 model_repository/.build.json .pytest_cache .mypy_cache .ruff_cache
