"""Fixtures of the integration tests: each hands out a served runtime from ``harness.serve``.

- ``serve_target(**settings)``: a runtime on the module's store (SQLite, PostgreSQL) and inference backend
  (onnxruntime, Triton), every (store, backend) pair with a database of its own; the backend sits behind a gate.
- ``env``: one such runtime per module, served over HTTP and gRPC; a module sets its settings with
  ``pytest.mark.served(...)``. Tests keep apart by company (as tenancy keeps customers apart).
- ``api``: a fresh such runtime per test (HTTP), under a company of its own.
- ``serve_local(**settings)``: a runtime on the session's onnxruntime models and a SQLite file of the test's own,
  behind a gate (overload, faults).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from harness import Harness, base_settings, new_schema, pg_exec, pg_url, postgres_dsn, serve

from server.inference.backend import InferenceBackend
from server.settings import Settings
from server.store import create_store

ServeFactory = Callable[..., contextlib.AbstractAsyncContextManager[Harness]]


@pytest.fixture(scope="session")
def image_bytes(faces_dir: Path) -> Callable[[str], bytes]:
    """``image_bytes("obama_01_portrait_2012.jpg")``: a shared photo's file bytes, each read once."""
    cache: dict[str, bytes] = {}

    def read(name: str) -> bytes:
        if name not in cache:
            cache[name] = (faces_dir / name).read_bytes()
        return cache[name]

    return read


@dataclass(frozen=True)
class InferenceTarget:
    """Which inference backend a test module runs on: the session's onnxruntime models, or a real tritonserver."""

    kind: str
    backend: InferenceBackend | None = None
    triton_url: str | None = None


@pytest.fixture(scope="module", params=["onnxruntime", pytest.param("triton", marks=pytest.mark.triton)])
def inference(request: pytest.FixtureRequest) -> InferenceTarget:
    if request.param == "onnxruntime":
        return InferenceTarget("onnxruntime", backend=request.getfixturevalue("backend"))
    return InferenceTarget("triton", triton_url=request.getfixturevalue("local_triton").grpc_url)


@dataclass(frozen=True)
class StoreTarget:
    """Where one test module's scans live: a SQLite file or a PostgreSQL schema of its own."""

    kind: str
    settings: Settings
    connect_args: dict[str, Any] | None = None


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 inference: InferenceTarget) -> Iterator[StoreTarget]:
    # Depending on ``inference`` gives every (store, backend) pair of a module a fresh database of its own.
    settings = base_settings(tmp_path_factory.mktemp(f"data-{request.param}"))
    if request.param == "sqlite":
        yield StoreTarget("sqlite", settings)
        return
    dsn = postgres_dsn()
    schema = new_schema("it")
    asyncio.run(pg_exec(dsn, f'CREATE SCHEMA "{schema}"'))
    try:
        # search_path puts this module's tables in a schema of its own; tests then separate by company.
        yield StoreTarget("postgres", settings.replace(database_url=pg_url(dsn)),
                          {"server_settings": {"search_path": schema}})
    finally:
        asyncio.run(pg_exec(dsn, f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(scope="module")
def serve_target(store_target: StoreTarget, inference: InferenceTarget) -> ServeFactory:
    """``async with serve_target(with_grpc=..., company=..., **settings_changes) as h``."""

    @contextlib.asynccontextmanager
    async def start(*, with_grpc: bool = False, company: str = "acme", **changes: Any) -> AsyncIterator[Harness]:
        settings = store_target.settings.replace(**changes)
        store = create_store(settings, connect_args=store_target.connect_args)
        if inference.kind == "triton":
            from server.inference.triton import TritonBackend

            assert inference.triton_url is not None
            # Triton batches itself, so our wait is 0; the client is this server's own (closed with it).
            settings = settings.replace(backend="triton", triton_url=inference.triton_url,
                                        max_wait_ms=changes.get("max_wait_ms", 0.0))
            backend: InferenceBackend = await TritonBackend.connect(inference.triton_url)
            owns = True
        else:
            assert inference.backend is not None
            backend, owns = inference.backend, False
        async with serve(settings, backend=backend, owns_backend=owns, store=store, with_grpc=with_grpc,
                         company=company) as h:
            yield h

    return start


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(request: pytest.FixtureRequest, serve_target: ServeFactory) -> AsyncIterator[Harness]:
    """The module's runtime over HTTP and gRPC, with the settings of its ``pytest.mark.served(...)``."""
    marker = request.node.get_closest_marker("served")
    changes = dict(marker.kwargs) if marker is not None else {}
    async with serve_target(with_grpc=True, **changes) as h:
        yield h


@pytest.fixture
async def api(serve_target: ServeFactory) -> AsyncIterator[Harness]:
    async with serve_target(company=f"co-{uuid.uuid4().hex[:8]}") as h:
        yield h


@pytest.fixture
def serve_local(backend: InferenceBackend, tmp_path: Path) -> ServeFactory:
    """``async with serve_local(with_grpc=..., **settings_changes) as h``: SQLite, onnxruntime, a gate."""

    def start(*, with_grpc: bool = False, **changes: Any) -> contextlib.AbstractAsyncContextManager[Harness]:
        settings = base_settings(tmp_path / "data", max_wait_ms=1.0).replace(**changes)
        return serve(settings, backend=backend, with_grpc=with_grpc, company=f"co-{uuid.uuid4().hex[:8]}")

    return start
