"""Faults injected for real: a failing inference batch, a model file that does not load, the database going away
(SQLite locked; PostgreSQL connections killed and the server unreachable), Triton killed and restarted."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest
from harness import LOCAL_CPU, PAIR, WAIT_S, new_schema, pg_exec, postgres_dsn, serve

from server.errors import InferenceFailed
from server.inference.backend import MODEL_NAMES
from server.inference.factory import PendingBackend
from server.inference.onnxrt import OnnxRuntimeBackend
from server.settings import PROJECT_ROOT, Settings
from server.store import SqlScanStore
from tooling.serve import ServeProcess
from tooling.triton_local import LocalTriton, TritonUnavailableError
from tooling.wait import wait_until

REPO = PROJECT_ROOT / "model_repository"
SECRETS = ("injected", "RuntimeError", "Traceback", "onnx", "/")


def settings_for(tmp: Path, **changes: Any) -> Settings:
    return Settings(data_dir=tmp / "data", model_repository=REPO, device="cpu", grpc_port=0, max_batch_size=16,
                    max_wait_ms=1.0).replace(**changes)


@pytest.fixture
def images(image_bytes: Callable[[str], bytes]) -> tuple[bytes, bytes]:
    return image_bytes(PAIR[0]), image_bytes(PAIR[1])


def assert_problem(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == code
    assert not any(s in (body.get("detail") or "") for s in SECRETS), body["detail"]


# --------------------------------------------------------------------------- (a) inference errors


async def test_failed_batch_fails_only_its_requests(serve_local: Any, images: tuple[bytes, bytes]) -> None:
    async with serve_local() as h:
        gate = h.gate
        assert gate is not None
        # A's batch is in flight at a held gate, B waits for the next batch; then A's batch raises.
        gate.hold()
        first = asyncio.ensure_future(h.http_compare(*images, reference="a"))
        await gate.wait_rows("detector", 2)
        second = asyncio.ensure_future(h.http_compare(*images, reference="b"))
        await h.wait_queued("detector", 2)
        gate.fail_next = 1
        gate.release()
        r_a, r_b = await asyncio.wait_for(asyncio.gather(first, second), WAIT_S)
        assert_problem(r_a, 500, "inference_failed")
        assert r_b.status_code == 200, r_b.text
        assert h.batcher("detector").stats.failed_batches == 1
        # The next requests succeed, the failed one stored nothing.
        assert (await h.http_compare(*images, reference="c")).status_code == 200
        assert await h.count() == 2
        assert (await h.runtime.readiness())["batchers"]


async def test_onnxruntime_rejects_malformed_input_as_typed_error(backend: OnnxRuntimeBackend) -> None:
    spec = backend.spec("embedder")
    wrong = np.zeros((1, 3, 7, 7), np.float32)  # the embedder takes 112x112
    with pytest.raises(InferenceFailed) as err:
        await backend.infer("embedder", {spec.inputs[0].name: wrong})
    assert err.value.detail == "embedder inference failed"


# --------------------------------------------------------------------------- (b) a model that does not load


def corrupt_repository(tmp: Path) -> Path:
    repo = tmp / "repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns(".build.json"))
    model = repo / "detector" / "1" / "model.onnx"
    model.write_bytes(model.read_bytes()[:4096])  # truncated, as by a failed copy
    return repo


async def test_model_that_cannot_load_starts_not_ready_and_heals(tmp_path: Path,
                                                                 images: tuple[bytes, bytes]) -> None:
    repo = corrupt_repository(tmp_path)
    # No backend given: the runtime starts the configured one itself, as `facerec serve` does.
    async with serve(settings_for(tmp_path, model_repository=repo, ort_intra_threads=1)) as h:
        pending = h.runtime.backend
        assert isinstance(pending, PendingBackend)
        live = await h.http.get("/health/live")
        assert live.status_code == 200
        ready = await h.http.get("/health/ready")
        assert ready.status_code == 503
        body = ready.json()
        assert body["components"]["models"] is False and body["components"]["store"] is True
        assert "detector" in body["reasons"]["models"] and "cannot be loaded" in body["reasons"]["models"]
        assert str(repo) not in ready.text  # paths stay in the log
        assert_problem(await h.http_compare(*images), 503, "unavailable")
        # The operator puts a good file back: the next readiness check (after the retry interval) loads it.
        shutil.copy2(REPO / "detector" / "1" / "model.onnx", repo / "detector" / "1" / "model.onnx")
        pending.retry_s = 0.0
        assert (await h.http.get("/health/ready")).status_code == 200
        assert (await h.http_compare(*images)).status_code == 200


async def test_serve_with_unloadable_model_reports_why(tmp_path: Path) -> None:
    repo = corrupt_repository(tmp_path)
    server = ServeProcess(tmp_path / "data", env={**LOCAL_CPU, "FACEREC_MODEL_REPOSITORY": str(repo)}).start()
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            await asyncio.to_thread(urllib.request.urlopen, f"{server.url}/health/ready", timeout=10)
        assert err.value.code == 503
        body = msgspec.json.decode(err.value.read())
        assert "detector" in body["reasons"]["models"]
        log = server.log()
        assert "model detector cannot be loaded from" in log and "INVALID_PROTOBUF" in log
        assert "serving not-ready" in log
    finally:
        server.stop()
    assert server.proc is not None and server.proc.returncode == 0


# --------------------------------------------------------------------------- (c) the database goes away


async def test_sqlite_locked_gives_503_then_recovers(serve_local: Any, images: tuple[bytes, bytes]) -> None:
    async with serve_local() as h:
        assert (await h.http_compare(*images, reference="before")).status_code == 200
        # Another process holds the write lock past the store's 5 s busy timeout.
        locker = sqlite3.connect(h.runtime.settings.sqlite_path, isolation_level=None, check_same_thread=False)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            assert_problem(await h.http_compare(*images, reference="locked"), 503, "unavailable")
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert (await h.http_compare(*images, reference="after")).status_code == 200
        assert await h.count() == 2  # the refused compare left no row


class TcpProxy:
    """A loopback TCP forwarder standing in for the network path to PostgreSQL: ``down()`` cuts every
    connection and refuses new ones (the database is gone), ``up()`` listens again on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}


@pytest.fixture
async def pg_schema() -> AsyncIterator[tuple[str, str]]:
    dsn = postgres_dsn()
    schema = new_schema("faults")
    await pg_exec(dsn, f'CREATE SCHEMA "{schema}"')
    try:
        yield dsn, schema
    finally:
        await pg_exec(dsn, f'DROP SCHEMA "{schema}" CASCADE')


@pytest.mark.postgres
async def test_postgres_connections_killed_and_server_unreachable(
    backend: OnnxRuntimeBackend, tmp_path: Path, images: tuple[bytes, bytes], pg_schema: tuple[str, str]
) -> None:
    import asyncpg

    dsn, schema = pg_schema
    app_name = f"facerec-faults-{uuid.uuid4().hex[:6]}"
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.up()
    user = dsn.split("://", 1)[1].split("@", 1)[0]
    url = f"postgresql+asyncpg://{user}@127.0.0.1:{proxy.port}/test"
    store = SqlScanStore(url, connect_args={"server_settings": {"search_path": schema, "application_name": app_name}})
    admin = await asyncpg.connect(dsn, timeout=5)

    async def rows() -> int:
        return int(await admin.fetchval(f'SELECT count(*) FROM "{schema}".scans'))

    try:
        async with serve(settings_for(tmp_path, database_url=url), backend=backend, store=store,
                         company="faultco") as h:
            assert (await h.http_compare(*images, reference="before")).status_code == 200
            # 1. PostgreSQL kills the app's connections (a restart, an admin): the pool replaces them unseen.
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = 'test' AND application_name = $1 AND pid <> pg_backend_pid()", app_name)
            assert killed >= 1
            assert (await h.http_compare(*images, reference="after-kill")).status_code == 200
            # 2. The database becomes unreachable: 503 (never a hang or a 500), readiness false, health served.
            await proxy.down()
            assert_problem(await h.http_compare(*images, reference="down"), 503, "unavailable")
            assert_problem(await h.http.get("/v1/face-recognition", headers=h.headers()), 503, "unavailable")
            ready = await h.http.get("/health/ready")
            assert ready.status_code == 503 and ready.json()["components"]["store"] is False
            assert (await h.http.get("/health/live")).status_code == 200
            # 3. It comes back on the same address: the next requests succeed without a restart.
            await proxy.up()
            assert (await h.http.get("/health/ready")).status_code == 200
            assert (await h.http_compare(*images, reference="back")).status_code == 200
            assert await rows() == 3  # before, after-kill, back: the refused compare wrote nothing
            assert await h.count() == 3
    finally:
        await admin.close()
        await proxy.down()


# --------------------------------------------------------------------------- (d) Triton goes away


@pytest.mark.triton
async def test_triton_killed_then_restarted(tmp_path: Path, images: tuple[bytes, bytes]) -> None:
    if any(not (REPO / m / "1" / "model.onnx").is_file() for m in MODEL_NAMES):
        pytest.skip("model repository incomplete: run `make models`")
    triton = LocalTriton(REPO, intra_op_threads=1)
    try:
        await asyncio.to_thread(triton.start)
    except TritonUnavailableError as exc:
        pytest.skip(f"local tritonserver unavailable: {exc}")
    try:
        settings = settings_for(tmp_path, backend="triton", triton_url=triton.grpc_url, max_wait_ms=0.0)
        async with serve(settings) as h:
            assert (await h.http_compare(*images, reference="before")).status_code == 200
            await asyncio.to_thread(triton.kill)
            ready = await h.http.get("/health/ready")
            assert ready.status_code == 503 and ready.json()["components"]["models"] is False
            assert_problem(await h.http_compare(*images, reference="down"), 503, "unavailable")
            assert (await h.http.get("/health/live")).status_code == 200
            # A new Triton on the same address: the client reconnects, readiness and compares recover.
            await asyncio.to_thread(triton.start, keep_ports=True)

            async def models_ready() -> bool:
                return bool((await h.runtime.readiness())["models"])

            await wait_until(models_ready, within_s=WAIT_S, interval_s=0.2,
                             what="readiness to recover after Triton came back")
            assert (await h.http_compare(*images, reference="back")).status_code == 200
            assert await h.count() == 2
    finally:
        await asyncio.to_thread(triton.stop)
