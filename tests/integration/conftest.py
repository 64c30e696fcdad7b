"""Shared fixtures of the integration tests: the photos, one model backend per session, apps on both stores."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from server.app import create_app
from server.auth import ALL_ROLES, LOCAL_ISSUER
from server.inference.backend import InferenceBackend, ModelSpec
from server.runtime import Runtime
from server.settings import PROJECT_ROOT, Settings
from server.store import create_store

PG_HOST = "127.0.0.1:5432"
PG_USERS = ("postgres", "root")
PG_DSN_OVERRIDE = os.environ.get("FACEREC_TEST_PG_URL")


@pytest.fixture(scope="session")
def image_bytes(faces_dir: Path) -> Callable[[str], bytes]:
    """``image_bytes("obama_01_portrait_2012.jpg")``: a shared photo's file bytes, each read once."""
    cache: dict[str, bytes] = {}

    def read(name: str) -> bytes:
        if name not in cache:
            cache[name] = (faces_dir / name).read_bytes()
        return cache[name]

    return read


class SharedBackend:
    """Delegates to the session's backend but ignores ``aclose`` so each test's Runtime can close freely."""

    def __init__(self, inner: InferenceBackend) -> None:
        self.inner = inner

    @property
    def description(self) -> str:
        return self.inner.description

    def spec(self, model: str) -> ModelSpec:
        return self.inner.spec(model)

    async def infer(self, model: str, inputs: dict[str, npt.NDArray[np.float32]]) -> dict[str, npt.NDArray[np.float32]]:
        return await self.inner.infer(model, inputs)

    async def ready(self) -> bool:
        return await self.inner.ready()

    async def aclose(self) -> None:
        return None


# --------------------------------------------------------------------------- PostgreSQL


def _pg_dsn() -> tuple[str | None, str]:
    import asyncpg

    candidates = [PG_DSN_OVERRIDE] if PG_DSN_OVERRIDE else [f"postgresql://{u}@{PG_HOST}/test" for u in PG_USERS]
    reasons = []

    async def probe(dsn: str) -> None:
        conn = await asyncpg.connect(dsn, timeout=3)
        await conn.close()

    for dsn in candidates:
        try:
            asyncio.run(probe(dsn))
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            reasons.append(f"{dsn}: {exc!r}")
            continue
        return dsn, ""
    return None, f"PostgreSQL unreachable ({'; '.join(reasons)})"


def _pg_exec(dsn: str, sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(dsn, timeout=3)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


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
    data_dir = tmp_path_factory.mktemp(f"data-{request.param}")
    # Batch size 16 explicitly: on CPU the default is 1, and these tests check that batches do form.
    settings = Settings(data_dir=data_dir, model_repository=PROJECT_ROOT / "model_repository", device="cpu",
                        max_batch_size=16, grpc_port=0, max_wait_ms=5.0)
    if request.param == "sqlite":
        yield StoreTarget("sqlite", settings)
        return
    dsn, reason = _pg_dsn()
    if dsn is None:
        pytest.skip(reason)
    schema = f"http_{uuid.uuid4().hex[:12]}"
    _pg_exec(dsn, f'CREATE SCHEMA "{schema}"')
    url = "postgresql+asyncpg://" + dsn.split("://", 1)[1]
    try:
        # search_path puts this module's tables in a schema of its own; tests then separate by company.
        yield StoreTarget("postgres", settings.replace(database_url=url),
                          {"server_settings": {"search_path": schema}})
    finally:
        _pg_exec(dsn, f'DROP SCHEMA "{schema}" CASCADE')


@dataclass
class Api:
    """A running app, its runtime, an HTTP client and a token helper for one company."""

    runtime: Runtime
    client: httpx.AsyncClient
    company: str

    def token(self, roles: Any = ALL_ROLES, *, company: str | None = None, user: str = "alice") -> str:
        issuer = self.runtime.local_issuer
        assert issuer is not None
        s = self.runtime.settings
        return issuer.mint(company or self.company, user, roles, 600, s.auth_audience, LOCAL_ISSUER,
                           company_claim=s.auth_company_claim, roles_claim=s.auth_roles_claim)

    def auth(self, roles: Any = ALL_ROLES, *, company: str | None = None, user: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(roles, company=company, user=user)}"}


RuntimeFactory = Callable[..., Awaitable[Runtime]]


@pytest.fixture(scope="module")
def start_runtime(store_target: StoreTarget, inference: InferenceTarget) -> RuntimeFactory:
    """``await start_runtime(**settings_changes)``: a runtime on the module's store and inference backend."""

    async def start(**changes: Any) -> Runtime:
        settings = store_target.settings.replace(**changes) if changes else store_target.settings
        store = create_store(settings, connect_args=store_target.connect_args)
        if inference.kind == "triton":
            # The runtime connects (and later closes) its own client; Triton batches, so our wait is 0.
            settings = settings.replace(backend="triton", triton_url=inference.triton_url,
                                        max_wait_ms=changes.get("max_wait_ms", 0.0))
            return await Runtime.start(settings, store=store)
        assert inference.backend is not None
        return await Runtime.start(settings, backend=SharedBackend(inference.backend), store=store)

    return start


ApiFactory = Callable[..., contextlib.AbstractAsyncContextManager[Api]]


@pytest.fixture
def make_api(start_runtime: RuntimeFactory) -> ApiFactory:
    """``async with make_api(**settings_changes) as api``: an app on a caller-owned runtime, served in-process."""

    @contextlib.asynccontextmanager
    async def make(**changes: Any) -> AsyncIterator[Api]:
        runtime = await start_runtime(**changes)
        transport = httpx.ASGITransport(app=create_app(runtime.settings, runtime))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://facerec.test", timeout=60) as client:
                # A company per test keeps tests apart on a shared database, as tenancy keeps customers apart.
                yield Api(runtime, client, company=f"co-{uuid.uuid4().hex[:8]}")
        finally:
            await runtime.aclose()

    return make


@pytest.fixture
async def api(make_api: ApiFactory) -> AsyncIterator[Api]:
    async with make_api() as made:
        yield made
