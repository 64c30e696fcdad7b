"""Overload, deadlines and departed clients, over HTTP and gRPC, with the real app, batchers and servers.

The backend is the real onnxruntime one behind a gate (``faultkit.ProxyBackend``): closing the gate holds the
batch in flight, so the queue behind it fills deterministically. SQLite only: the store plays no part here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
from faultkit import PAIR, ProxyBackend, bearer, wait_until

from server.api.grpc.gen.facerec.v1 import face_recognition_pb2 as pb
from server.api.grpc.gen.facerec.v1 import face_recognition_pb2_grpc as pb_grpc
from server.api.grpc.server import GrpcServer, start_grpc_server
from server.app import create_app
from server.inference.onnxrt import OnnxRuntimeBackend
from server.runtime import Runtime
from server.service import ScanService
from server.settings import PROJECT_ROOT, Settings

COMPARE = "/v1/compare_face"
# Detector rows of one completed compare of two upright photos: each photo's first pass plus the two small rows of
# its upright check (server/inference/pipeline.py, DETECTOR_ROWS_PER_IMAGE bounds the worst case).
ROWS_PER_COMPARE = 2 * 3


@dataclass
class Env:
    runtime: Runtime
    proxy: ProxyBackend
    client: httpx.AsyncClient
    images: tuple[bytes, bytes]
    grpc: GrpcServer | None = None
    channel: grpc.aio.Channel | None = None

    @property
    def detector(self) -> Any:
        return self.runtime.runner.batchers["detector"]

    def post(self, reference: str = "r") -> Awaitable[httpx.Response]:
        a, b = self.images
        return self.client.post(COMPARE, headers={"Authorization": bearer(self.runtime)},
                                data={"channel": "WEB", "reference": reference},
                                files={"file1": ("a.jpg", a), "file2": ("b.jpg", b)})

    def grpc_call(self, timeout: float | None = None) -> Any:
        assert self.channel is not None
        a, b = self.images
        stub = pb_grpc.FaceRecognitionStub(self.channel)
        req = pb.CompareFacesRequest(channel="WEB", reference="g", file1=a, file2=b)
        return stub.CompareFaces(req, metadata=(("authorization", bearer(self.runtime)),), timeout=timeout)

    async def hold_one_batch(self) -> asyncio.Task[httpx.Response]:
        """Close the gate and start request A: its two detector rows form the batch in flight, blocked."""
        self.proxy.gate.clear()
        first = asyncio.ensure_future(self.post("a"))
        await wait_until(lambda: self.proxy.rows["detector"] == 2, what="request A's batch at the backend")
        return first

    async def queue_one(self) -> asyncio.Task[httpx.Response]:
        """Request B: its two detector rows wait in the queue behind A's batch."""
        second = asyncio.ensure_future(self.post("b"))
        await wait_until(lambda: self.detector.queue_depth == 2, what="request B queued")
        return second


@pytest.fixture
def make_env(backend: OnnxRuntimeBackend, tmp_path: Path,
             image_bytes: Callable[[str], bytes]) -> Callable[..., contextlib.AbstractAsyncContextManager[Env]]:
    @contextlib.asynccontextmanager
    async def make(*, with_grpc: bool = False, **changes: Any) -> AsyncIterator[Env]:
        settings = Settings(data_dir=tmp_path / "data", model_repository=PROJECT_ROOT / "model_repository",
                            device="cpu", grpc_port=0, max_wait_ms=1.0, max_batch_size=16).replace(**changes)
        proxy = ProxyBackend(backend)
        runtime = await Runtime.start(settings, backend=proxy)
        env = Env(runtime, proxy, httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings, runtime)),
                                                    base_url="http://facerec.test", timeout=60),
                  (image_bytes(PAIR[0]), image_bytes(PAIR[1])))
        try:
            if with_grpc:
                env.grpc = await start_grpc_server(runtime, ScanService(runtime), "127.0.0.1", 0)
                env.channel = grpc.aio.insecure_channel(f"127.0.0.1:{env.grpc.port}")
            yield env
        finally:
            proxy.gate.set()
            await env.client.aclose()
            if env.channel is not None:
                await env.channel.close()
            if env.grpc is not None:
                await env.grpc.stop(0)
            await runtime.aclose()

    return make


# --------------------------------------------------------------------------- overload


async def test_full_queue_is_refused_at_once_with_retry_hints(make_env: Any) -> None:
    async with make_env(max_queue=2, with_grpc=True) as env:
        first = await env.hold_one_batch()
        second = await env.queue_one()
        # HTTP: 429, Retry-After in whole seconds (RFC 9110), the precise hint in ms in the problem body.
        elapsed = []
        for _ in range(3):
            t0 = time.perf_counter()
            r = await env.post("c")
            elapsed.append(time.perf_counter() - t0)
            assert r.status_code == 429, r.text
            body = r.json()
            assert body["code"] == "overloaded"
            assert r.headers["content-type"].startswith("application/problem+json")
            assert isinstance(body["retry_after_ms"], int) and body["retry_after_ms"] >= 50
            assert int(r.headers["retry-after"]) == -(-body["retry_after_ms"] // 1000)
        assert min(elapsed) < 0.1, f"refusal took {min(elapsed) * 1000:.0f} ms"
        # gRPC: RESOURCE_EXHAUSTED with the hint in the trailers.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await env.grpc_call(timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(err.value.trailing_metadata() or ())
        assert trailers["facerec-error-code"] == "overloaded"
        assert int(trailers["facerec-retry-after-ms"]) >= 50
        # The refused requests never reached the backend; the admitted ones complete once it frees up.
        env.proxy.gate.set()
        done = await asyncio.gather(first, second)
        assert [r.status_code for r in done] == [200, 200]
        # Each admitted compare's first pass ran; its upright check (2 rows a photo) is skipped when it meets the
        # still-full queue (max_queue=2), so 4..12 rows, never a refused request's. Those skipped checks count as
        # refusals in the batcher's stats too, until admission reserves every row a request can need (the
        # pipeline's DETECTOR_ROWS_PER_IMAGE); the four refused requests are the 429s and the gRPC call above.
        assert 4 <= env.proxy.rows["detector"] <= 2 * ROWS_PER_COMPARE
        checks_refused = 2 * ROWS_PER_COMPARE - env.proxy.rows["detector"]  # rows of skipped checks
        assert 4 <= env.detector.stats.rejected_overloaded <= 4 + checks_refused
        rejected = env.runtime.metrics.value("facerec_requests_rejected_total", reason="overloaded")
        assert 4 <= rejected <= 4 + checks_refused


# --------------------------------------------------------------------------- deadlines


async def test_http_deadline_drops_queued_work_and_answers_503(make_env: Any) -> None:
    async with make_env(request_timeout_s=0.5) as env:
        first = await env.hold_one_batch()
        t0 = time.perf_counter()
        second = await env.queue_one()
        r_b = await second
        waited = time.perf_counter() - t0
        assert r_b.status_code == 503, r_b.text
        assert r_b.json()["code"] == "deadline_exceeded"
        assert "retry-after" in r_b.headers
        assert waited < 2.0, f"deadline answer took {waited:.2f} s"
        # The in-flight request's deadline passes too: its client is answered, not left waiting on the backend.
        r_a = await first
        assert r_a.status_code == 503 and r_a.json()["code"] == "deadline_exceeded"
        env.proxy.gate.set()
        await wait_until(lambda: env.detector.queue_depth == 0 and not env.detector._inflight,
                         what="the batcher to settle")
        assert env.proxy.rows["detector"] == 2, "request B's expired rows reached the backend"
        assert env.detector.stats.dropped_deadline == 2
        assert env.detector.stats.dropped_cancelled == 0
        # And the server keeps serving (a list: a full compare may not fit 0.5 s on a busy 2-core machine).
        r = await env.client.get("/v1/face-recognition", headers={"Authorization": bearer(env.runtime)})
        assert r.status_code == 200 and r.json()["totalElements"] == 0


async def test_grpc_deadlines_client_and_server(make_env: Any) -> None:
    async with make_env(request_timeout_s=0.5, with_grpc=True) as env:
        first = await env.hold_one_batch()
        # The server's own request timeout, no client deadline: DEADLINE_EXCEEDED with the error code trailer.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await env.grpc_call(timeout=None)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert dict(err.value.trailing_metadata() or ())["facerec-error-code"] == "deadline_exceeded"
        # A client deadline shorter than the server's is honoured the same way.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await env.grpc_call(timeout=0.2)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await first
        env.proxy.gate.set()
        await wait_until(lambda: env.detector.queue_depth == 0 and not env.detector._inflight,
                         what="the batcher to settle")
        assert env.proxy.rows["detector"] == 2
        assert env.detector.stats.dropped_deadline == 4


# --------------------------------------------------------------------------- clients that leave


async def test_http_client_disconnect_frees_its_work(make_env: Any) -> None:
    """Over a real socket (uvicorn): closing the connection cancels the handler; its rows never run."""
    async with make_env() as env:
        app = create_app(env.runtime.settings, env.runtime)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off"))
        serving = asyncio.ensure_future(server.serve())
        try:
            await wait_until(lambda: server.started, what="uvicorn to start")
            port = server.servers[0].sockets[0].getsockname()[1]
            env.client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60)
            first = await env.hold_one_batch()
            second = await env.queue_one()
            second.cancel()  # the client gives up: httpx closes the connection
            with contextlib.suppress(asyncio.CancelledError):
                await second
            # The server noticed: the handler was cancelled, and with it the queued rows' futures.
            await wait_until(lambda: all(w.future.cancelled() for w in env.detector._queue),
                             what="the departed client's rows to be withdrawn")
            env.proxy.gate.set()
            assert (await first).status_code == 200
            assert env.detector.stats.dropped_cancelled == 2
            assert env.proxy.rows["detector"] == ROWS_PER_COMPARE, "the departed client's rows reached the backend"
            assert (await env.post("after")).status_code == 200
        finally:
            await env.client.aclose()
            server.should_exit = True
            await serving


async def test_grpc_cancelled_call_frees_its_work(make_env: Any) -> None:
    async with make_env(with_grpc=True) as env:
        first = await env.hold_one_batch()
        call = env.grpc_call(timeout=30)
        await wait_until(lambda: env.detector.queue_depth == 2, what="the gRPC call's rows queued")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await wait_until(lambda: all(w.future.cancelled() for w in env.detector._queue),
                         what="the cancelled call's rows to be withdrawn")
        env.proxy.gate.set()
        assert (await first).status_code == 200
        assert env.detector.stats.dropped_cancelled == 2
        assert env.proxy.rows["detector"] == ROWS_PER_COMPARE
