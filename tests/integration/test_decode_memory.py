"""Decoding under the memory budget (``FACEREC_DECODE_MEMORY_MB``), over HTTP and gRPC, with the real app and models.

The backend is the real onnxruntime one behind the harness's gate (``GatedBackend``): a compare whose detector
batch is held at the closed gate keeps its decoded pixels, so what the budget lets the next compare do is
deterministic. The memory wait is admission's second step: a compare waiting for memory holds its admission place,
and one refused for memory counts as refused (``memory``), not as admitted work. The last test runs ``facerec serve``
with its defaults under 16 concurrent worst-case compares and reads the kernel's record of its peak resident memory
(VmHWM): memory, not time, so machine load does not change the verdict.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from harness import COMPARE, LOCAL_CPU, PAIR, Harness
from PIL import Image

from server.settings import PROJECT_ROOT
from tooling.serve import ServeProcess
from tooling.wait import wait_until

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


async def _http(h: Harness, images: tuple[bytes, bytes]) -> httpx.Response:
    return await h.http_compare(*images, reference="budget")


async def _grpc(h: Harness, images: tuple[bytes, bytes]) -> tuple[int, str]:
    """(status code value, facerec-error-code) of a CompareFaces call; (0, "") when it succeeds."""
    try:
        await h.grpc_compare(*images, reference="g", timeout=PATIENCE_S)
    except grpc.aio.AioRpcError as err:
        return err.code().value[0], dict(err.trailing_metadata() or ()).get("facerec-error-code", "")
    return 0, ""


def _waiting(h: Harness) -> float:
    return h.runtime.metrics.value("facerec_decode_memory_waiting")


async def _first_at_the_gate(h: Harness, images: tuple[bytes, bytes]) -> asyncio.Future[httpx.Response]:
    """A compare whose detector batch (both rows: batch size 16) is held at the closed gate, pixels decoded."""
    assert h.gate is not None
    h.gate.hold()
    first = asyncio.ensure_future(_http(h, images))
    await h.gate.wait_rows("detector", 2, within_s=PATIENCE_S)
    return first


@pytest.mark.parametrize("second", ["http", "grpc"])
async def test_a_compare_waits_for_memory_another_one_holds(serve_local: Any, big_pair: tuple[bytes, bytes],
                                                           second: str) -> None:
    """64 MB: one 2 x 3.2 MP compare fits (decoded one image at a time); a second must wait while the first keeps
    its pixels at the closed gate, and is decoded as soon as the first is done."""
    async with serve_local(with_grpc=True, decode_memory_mb=64) as h:
        assert h.gate is not None
        first = await _first_at_the_gate(h, big_pair)
        later = asyncio.ensure_future(_http(h, big_pair) if second == "http" else _grpc(h, big_pair))
        await wait_until(lambda: _waiting(h) == 1, within_s=PATIENCE_S, what="the second compare waiting for memory")
        # The second one has not decoded: none of its rows reached the detector's queue or the model.
        assert h.gate.rows["detector"] == 2
        assert h.runtime.metrics.value("facerec_queue_depth", model="detector") == 0
        assert h.runtime.decode_budget.in_use > 0
        # Waiting for memory is part of admission: it holds a place in the gate meanwhile.
        assert h.runtime.admission.in_flight == 2
        h.gate.release()
        assert (await asyncio.wait_for(first, PATIENCE_S)).status_code == 200
        done = await asyncio.wait_for(later, PATIENCE_S)
        assert (done.status_code == 200) if second == "http" else (done == (0, ""))
        assert h.runtime.decode_budget.in_use == 0 and _waiting(h) == 0
        assert (h.runtime.admission.admitted, h.runtime.admission.refused) == (2, 0)


async def test_memory_not_granted_within_half_the_deadline_is_429(serve_local: Any,
                                                                  big_pair: tuple[bytes, bytes]) -> None:
    """With a 10 s deadline a compare waits 5 s for memory, then is told to retry (429, RESOURCE_EXHAUSTED): the
    first compare keeps its pixels at the closed gate all along (its own deadline is later). The refusal happens
    before any decode, so it counts as refused (``memory``), never as admitted work refused later."""
    async with serve_local(with_grpc=True, decode_memory_mb=64, request_timeout_s=10.0) as h:
        assert h.gate is not None
        first = await _first_at_the_gate(h, big_pair)
        refused, (code, error) = await asyncio.wait_for(asyncio.gather(_http(h, big_pair), _grpc(h, big_pair)),
                                                        PATIENCE_S)
        assert refused.status_code == 429, refused.text
        body = refused.json()
        assert body["code"] == "overloaded" and "FACEREC_DECODE_MEMORY_MB" in body["detail"], body
        assert refused.headers["retry-after"] and body["retry_after_ms"] > 0
        assert (code, error) == (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "overloaded")
        metrics = h.runtime.metrics
        assert metrics.value("facerec_requests_rejected_total", reason="memory") == 2
        assert metrics.value("facerec_requests_rejected_total", reason="overloaded") == 0
        assert (h.runtime.admission.admitted, h.runtime.admission.refused) == (1, 2)  # the first only
        assert h.gate.rows["detector"] == 2  # neither refused compare queued a row
        h.gate.release()
        assert (await asyncio.wait_for(first, PATIENCE_S)).status_code in (200, 503)  # 503 if its deadline passed
        assert h.runtime.decode_budget.in_use == 0
        assert h.runtime.admission.in_flight == 0


async def test_a_compare_larger_than_the_whole_budget_runs_alone(serve_local: Any,
                                                                 big_pair: tuple[bytes, bytes]) -> None:
    async with serve_local(with_grpc=True, decode_memory_mb=16) as h:
        assert (await _http(h, big_pair)).status_code == 200
        assert await _grpc(h, big_pair) == (0, "")
        assert h.runtime.decode_budget.in_use == 0


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
    server = ServeProcess(tmp_path / "data", env={**LOCAL_CPU,
                                                  "FACEREC_MODEL_REPOSITORY": str(PROJECT_ROOT / "model_repository")}
                          ).start()
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
