"""Decoding under the memory budget (``FACEREC_DECODE_MEMORY_MB``), over HTTP and gRPC, with the real app and models.

The backend is the real onnxruntime one behind a gate (``faultkit.ProxyBackend``): a compare whose detector batch
is held at the closed gate keeps its decoded pixels, so what the budget lets the next compare do is deterministic.
The last test runs ``facerec serve`` with its defaults under 16 concurrent worst-case compares and reads the
kernel's record of its peak resident memory (VmHWM): memory, not time, so machine load does not change the verdict.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import pytest_asyncio
from faultkit import PAIR, ProxyBackend, ServeProcess, bearer, wait_until
from PIL import Image

from server.api.grpc.gen.facerec.v1 import face_recognition_pb2 as pb
from server.api.grpc.gen.facerec.v1 import face_recognition_pb2_grpc as pb_grpc
from server.api.grpc.server import GrpcServer, start_grpc_server
from server.app import create_app
from server.inference.onnxrt import OnnxRuntimeBackend
from server.runtime import Runtime
from server.service import ScanService
from server.settings import PROJECT_ROOT, Settings

COMPARE = "/v1/compare_face"
PATIENCE_S = 120.0  # every wait below ends on an event (a batch reaching the gate, a deadline): never on speed
GIB = 1024**3


def _upscaled(data: bytes, size: tuple[int, int]) -> bytes:
    """A photo resized to ``size`` (3.2 MP here): about 45 MB at the decoder's peak, 9.6 MB once decoded."""
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").resize(size).save(out, "JPEG", quality=85)
    return out.getvalue()


@pytest.fixture(scope="module")
def big_pair(image_bytes: Callable[[str], bytes]) -> tuple[bytes, bytes]:
    return _upscaled(image_bytes(PAIR[0]), (2000, 1600)), _upscaled(image_bytes(PAIR[1]), (2000, 1600))


@dataclass
class Env:
    runtime: Runtime
    proxy: ProxyBackend
    client: httpx.AsyncClient
    grpc: GrpcServer
    channel: grpc.aio.Channel
    images: tuple[bytes, bytes]

    def http(self) -> Any:
        a, b = self.images
        return self.client.post(COMPARE, headers={"Authorization": bearer(self.runtime)},
                                data={"channel": "WEB", "reference": "budget"},
                                files={"file1": ("a.jpg", a), "file2": ("b.jpg", b)})

    async def grpc_call(self) -> tuple[int, str]:
        a, b = self.images
        stub = pb_grpc.FaceRecognitionStub(self.channel)
        try:
            await stub.CompareFaces(pb.CompareFacesRequest(channel="WEB", reference="g", file1=a, file2=b),
                                    metadata=(("authorization", bearer(self.runtime)),), timeout=PATIENCE_S)
        except grpc.aio.AioRpcError as err:
            return err.code().value[0], dict(err.trailing_metadata() or ()).get("facerec-error-code", "")
        return 0, ""

    def waiting(self) -> float:
        return self.runtime.metrics.value("facerec_decode_memory_waiting")


@pytest_asyncio.fixture
async def make_env(backend: OnnxRuntimeBackend, tmp_path: Path,
                   big_pair: tuple[bytes, bytes]) -> AsyncIterator[Callable[..., Any]]:
    made: list[Env] = []

    async def make(**changes: Any) -> Env:
        # Batch size 16: both rows of a compare travel in one detector batch, so one batch at the gate holds it.
        settings = Settings(data_dir=tmp_path / f"data{len(made)}", device="cpu", grpc_port=0, max_batch_size=16,
                            **changes)
        proxy = ProxyBackend(backend)
        runtime = await Runtime.start(settings, backend=proxy)
        server = await start_grpc_server(runtime, ScanService(runtime), "127.0.0.1", 0)
        transport = httpx.ASGITransport(app=create_app(settings, runtime))
        client = httpx.AsyncClient(transport=transport, base_url="http://facerec.test", timeout=PATIENCE_S)
        env = Env(runtime, proxy, client, server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"), big_pair)
        made.append(env)
        return env

    yield make
    for env in made:
        env.proxy.gate.set()
        await env.client.aclose()
        await env.channel.close()
        await env.grpc.stop(0)
        await env.runtime.aclose()


@pytest.mark.parametrize("second", ["http", "grpc"])
async def test_a_compare_waits_for_memory_another_one_holds(make_env: Any, second: str) -> None:
    """64 MB: one 2 x 3.2 MP compare fits (decoded one image at a time); a second must wait while the first keeps
    its pixels at the closed gate, and is decoded as soon as the first is done."""
    env: Env = await make_env(decode_memory_mb=64)
    env.proxy.gate.clear()
    first = asyncio.ensure_future(env.http())
    await wait_until(lambda: env.proxy.rows["detector"] >= 2, PATIENCE_S, "the first compare at the gate")
    later = asyncio.ensure_future(env.http() if second == "http" else env.grpc_call())
    await wait_until(lambda: env.waiting() == 1, PATIENCE_S, "the second compare waiting for memory")
    # The second one has not decoded: none of its rows reached the detector's queue or the model.
    assert env.proxy.rows["detector"] == 2
    assert env.runtime.metrics.value("facerec_queue_depth", model="detector") == 0
    assert env.runtime.decode_budget.in_use > 0
    env.proxy.gate.set()
    assert (await asyncio.wait_for(first, PATIENCE_S)).status_code == 200
    done = await asyncio.wait_for(later, PATIENCE_S)
    assert (done.status_code == 200) if second == "http" else (done == (0, ""))
    assert env.runtime.decode_budget.in_use == 0 and env.waiting() == 0


async def test_memory_not_granted_within_half_the_deadline_is_429(make_env: Any) -> None:
    """With a 10 s deadline a compare waits 5 s for memory, then is told to retry (429, RESOURCE_EXHAUSTED): the
    first compare keeps its pixels at the closed gate all along (its own deadline is later)."""
    env: Env = await make_env(decode_memory_mb=64, request_timeout_s=10.0)
    env.proxy.gate.clear()
    first = asyncio.ensure_future(env.http())
    await wait_until(lambda: env.proxy.rows["detector"] >= 2, PATIENCE_S, "the first compare at the gate")
    refused, (code, error) = await asyncio.wait_for(asyncio.gather(env.http(), env.grpc_call()), PATIENCE_S)
    assert refused.status_code == 429, refused.text
    body = refused.json()
    assert body["code"] == "overloaded" and "FACEREC_DECODE_MEMORY_MB" in body["detail"], body
    assert refused.headers["retry-after"] and body["retry_after_ms"] > 0
    assert (code, error) == (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "overloaded")
    assert env.runtime.metrics.value("facerec_requests_rejected_total", reason="memory") == 2
    env.proxy.gate.set()
    assert (await asyncio.wait_for(first, PATIENCE_S)).status_code in (200, 503)  # 503 if its own deadline passed
    assert env.runtime.decode_budget.in_use == 0


async def test_a_compare_larger_than_the_whole_budget_runs_alone(make_env: Any) -> None:
    env: Env = await make_env(decode_memory_mb=16)
    assert (await env.http()).status_code == 200
    assert await env.grpc_call() == (0, "")
    assert env.runtime.decode_budget.in_use == 0


# --------------------------------------------------------------------------- the real process, worst case


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def worst_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """40 MP (just under the default limit): a solid-colour PNG (130 KB) and a noisy JPEG (6 MB)."""
    w, h = 7300, 5470
    png, jpeg = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (w, h), (200, 150, 120)).save(png, "PNG")
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h))
    noise.save(jpeg, "JPEG", quality=60)
    return {"png": png.getvalue(), "jpeg": jpeg.getvalue()}


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="peak RSS is read from /proc (Linux)")
async def test_sixteen_worst_case_compares_stay_under_1_5_gib(tmp_path: Path, worst_images: dict[str, bytes],
                                                               image_bytes: Callable[[str], bytes]) -> None:
    server = ServeProcess(tmp_path / "data", FACEREC_MODEL_REPOSITORY=str(PROJECT_ROOT / "model_repository")).start()
    try:
        assert server.proc is not None
        token = server.token("acme")
        async with httpx.AsyncClient(base_url=server.url, timeout=PATIENCE_S) as client:
            async def compare(kind: str) -> int:
                data = worst_images[kind]
                resp = await client.post(COMPARE, headers={"Authorization": f"Bearer {token}"},
                                         data={"channel": "WEB", "reference": kind},
                                         files={"file1": ("a", data), "file2": ("b", data)})
                return resp.status_code

            warm = await client.post(COMPARE, headers={"Authorization": f"Bearer {token}"},
                                     data={"channel": "WEB", "reference": "warm"},
                                     files={"file1": ("a.jpg", image_bytes(PAIR[0])),
                                            "file2": ("b.jpg", image_bytes(PAIR[1]))})
            assert warm.status_code == 200, warm.text
            baseline = _peak_rss(server.proc.pid)
            statuses = await asyncio.gather(*(compare("png" if i % 2 else "jpeg") for i in range(16)))
        peak = _peak_rss(server.proc.pid)
        print(f"\npeak RSS {peak / 2**20:.0f} MiB (after warm-up {baseline / 2**20:.0f} MiB); statuses {statuses}")
        assert set(statuses) <= {200, 413, 422, 429}, statuses
        assert 422 in statuses  # solid colour: decoded, analysed, no face
        assert peak < 1.5 * GIB, f"peak RSS {peak / 2**20:.0f} MiB"
        assert server.proc.poll() is None  # not killed
    finally:
        server.stop()
