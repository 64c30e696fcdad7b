"""Overload, deadlines and departed clients, over HTTP and gRPC, with the real app, batchers and servers.

The backend is the real onnxruntime one behind the harness's gate: holding it keeps a batch in flight, so the
gate and the queues behind it fill deterministically (no timing windows). SQLite only: the store plays no part.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import pytest
from harness import PAIR, WAIT_S, Harness, socket_server

import server.service
from server.app import create_app
from tooling.wait import wait_until

DecodeCount = list[int]
# Detector rows of one completed compare of two upright photos: each photo's first pass plus the two small rows of
# its upright check (server/inference/pipeline.py; DETECTOR_ROWS_PER_IMAGE bounds the worst case). A request
# stopped while its first pass is held never gets to the check: 2 rows.
ROWS_PER_COMPARE = 2 * 3


@pytest.fixture
def images(image_bytes: Callable[[str], bytes]) -> tuple[bytes, bytes]:
    return image_bytes(PAIR[0]), image_bytes(PAIR[1])


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> DecodeCount:
    """Counts every image the service decodes (a spy around the real decoder)."""
    count = [0]
    real = server.service.decode_scaled

    def spy(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(server.service, "decode_scaled", spy)
    return count


def compare(h: Harness, images: tuple[bytes, bytes], reference: str) -> asyncio.Future[httpx.Response]:
    return asyncio.ensure_future(h.http_compare(*images, reference=reference))


async def hold_one_batch(h: Harness, images: tuple[bytes, bytes]) -> asyncio.Future[httpx.Response]:
    """Hold the backend and start request A: its two detector rows form the batch in flight, held at the gate."""
    assert h.gate is not None
    h.gate.hold()
    first = compare(h, images, "a")
    await h.gate.wait_rows("detector", 2)
    return first


def rejected(h: Harness, reason: str) -> float:
    return h.runtime.metrics.value("facerec_requests_rejected_total", reason=reason)


# --------------------------------------------------------------------------- overload


async def test_full_gate_refuses_before_decoding_and_every_admitted_request_completes(
    serve_local: Any, images: tuple[bytes, bytes], decodes: DecodeCount
) -> None:
    admitted_n = 4
    async with serve_local(max_in_flight=admitted_n, with_grpc=True) as h:
        gate, admission, detector = h.gate, h.runtime.admission, h.batcher("detector")
        assert gate is not None
        gate.hold()
        admitted = [compare(h, images, f"in-{i}") for i in range(admitted_n)]
        # Every admitted request decoded and queued its rows; one batch is held at the backend, the rest wait.
        await wait_until(lambda: gate.rows["detector"] + detector.queue_depth == 2 * admitted_n, within_s=WAIT_S,
                         what="every admitted request's detector rows")
        assert admission.in_flight == admitted_n
        assert h.runtime.metrics.value("facerec_requests_in_flight") == admitted_n
        assert decodes[0] == 2 * admitted_n

        # HTTP: 429 with Retry-After in whole seconds (RFC 9110) and the precise hint in ms in the problem body.
        for i in range(3):
            r = await h.http_compare(*images, reference=f"out-{i}")
            assert r.status_code == 429, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            body = r.json()
            assert body["code"] == "overloaded"
            assert isinstance(body["retry_after_ms"], int) and body["retry_after_ms"] >= 50
            assert int(r.headers["retry-after"]) == -(-body["retry_after_ms"] // 1000)
        # gRPC: RESOURCE_EXHAUSTED with the hint in the trailers.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.grpc_compare(*images, reference="out-grpc")
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(err.value.trailing_metadata() or ())
        assert trailers["facerec-error-code"] == "overloaded"
        assert int(trailers["facerec-retry-after-ms"]) >= 50
        # Refused before any decoding (the spy saw no new image) and answered while the backend was still held:
        # a refusal waits for nothing.
        assert decodes[0] == 2 * admitted_n
        assert not any(t.done() for t in admitted)

        gate.release()
        done = await asyncio.wait_for(asyncio.gather(*admitted), WAIT_S)
        # Admitted once, never refused later: every admitted request completes, whatever stage it had reached.
        assert [r.status_code for r in done] == [200] * admitted_n, [r.text for r in done]
        assert gate.rows["detector"] == ROWS_PER_COMPARE * admitted_n  # the refused requests never reached a model
        assert all(h.batcher(m).stats.queue_overflows == 0 for m in ("detector", "landmarker", "embedder"))
        # The counters count requests (4 refused), not rows; nothing is left in flight.
        assert rejected(h, "overloaded") == 4 and admission.refused == 4
        assert rejected(h, "deadline") == rejected(h, "cancelled") == 0
        assert admission.in_flight == 0 and h.runtime.metrics.value("facerec_requests_in_flight") == 0
        assert (await h.http_compare(*images, reference="after")).status_code == 200


# --------------------------------------------------------------------------- deadlines

# The deadline the tests below let pass while the backend is held: long enough that a request reaches its queue
# first even on a 10x slower machine (~0.1 s unloaded), short enough to keep the tests quick.
DEADLINE_S = 2.0


async def test_http_deadline_drops_queued_work_and_answers_503(serve_local: Any,
                                                              images: tuple[bytes, bytes]) -> None:
    async with serve_local(request_timeout_s=DEADLINE_S) as h:
        assert h.gate is not None
        first = await hold_one_batch(h, images)
        second = compare(h, images, "b")
        await h.wait_queued("detector", 2)
        r_b = await asyncio.wait_for(second, WAIT_S)
        assert r_b.status_code == 503, r_b.text
        assert r_b.json()["code"] == "deadline_exceeded"
        assert "retry-after" in r_b.headers
        # The in-flight request's deadline passes too: its client is answered, not left waiting on the backend.
        r_a = await asyncio.wait_for(first, WAIT_S)
        assert r_a.status_code == 503 and r_a.json()["code"] == "deadline_exceeded"
        h.gate.release()
        await h.wait_settled("detector")
        assert h.gate.rows["detector"] == 2, "request B's expired rows reached the backend"
        stats = h.batcher("detector").stats
        assert stats.dropped_deadline == 2 and stats.dropped_cancelled == 0
        # Requests are counted once each (A and B), rows per model.
        assert rejected(h, "deadline") == 2
        assert h.runtime.metrics.value("facerec_rows_dropped_total", model="detector", reason="deadline") == 2
        # And the server keeps serving.
        r = await h.http.get("/v1/face-recognition", headers=h.headers())
        assert r.status_code == 200 and r.json()["totalElements"] == 0


async def test_grpc_deadlines_client_and_server(serve_local: Any, images: tuple[bytes, bytes]) -> None:
    async with serve_local(request_timeout_s=DEADLINE_S, with_grpc=True) as h:
        assert h.gate is not None
        first = await hold_one_batch(h, images)
        # The server's own request timeout, no client deadline: DEADLINE_EXCEEDED with the error code trailer.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.grpc_compare(*images, timeout=None)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert dict(err.value.trailing_metadata() or ())["facerec-error-code"] == "deadline_exceeded"
        # A client deadline shorter than the server's is honoured the same way.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.grpc_compare(*images, timeout=DEADLINE_S / 2)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(first, WAIT_S)
        h.gate.release()
        await h.wait_settled("detector")
        assert h.gate.rows["detector"] == 2  # nothing of the expired calls ran
        # Three requests ended at a deadline (A and the two calls). At a client deadline grpc cancels the handler
        # in the same instant the server's own timer fires, so that one may count as cancelled.
        assert rejected(h, "deadline") >= 2
        assert rejected(h, "deadline") + rejected(h, "cancelled") == 3


# --------------------------------------------------------------------------- clients that leave


async def assert_withdrawn(h: Harness, first: asyncio.Future[httpx.Response]) -> None:
    """The departed request's queued rows were withdrawn and never ran; the request is counted once."""
    assert h.gate is not None
    # The server noticed: the handler was cancelled, and with it the queued rows' futures.
    detector = h.batcher("detector")
    await wait_until(lambda: all(w.future.cancelled() for w in detector._queue), within_s=WAIT_S,
                     what="the departed request's rows to be withdrawn")
    h.gate.release()
    assert (await asyncio.wait_for(first, WAIT_S)).status_code == 200
    assert detector.stats.dropped_cancelled == 2
    assert h.gate.rows["detector"] == ROWS_PER_COMPARE, "the departed request's rows reached the backend"
    await wait_until(lambda: rejected(h, "cancelled") == 1, within_s=WAIT_S,  # one request, not 2 rows
                     what="the departed request to be counted")


async def test_http_client_disconnect_frees_its_work(serve_local: Any, images: tuple[bytes, bytes]) -> None:
    """Over a real socket (uvicorn): closing the connection cancels the handler; its rows never run."""
    async with serve_local() as h:
        assert h.gate is not None
        app = create_app(h.runtime.settings, h.runtime)
        async with socket_server(app) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                                                 timeout=WAIT_S) as client:

            def post(reference: str) -> asyncio.Future[httpx.Response]:
                return asyncio.ensure_future(client.post(
                    "/v1/compare_face", headers=h.headers(), data={"channel": "WEB", "reference": reference},
                    files={"file1": ("a.jpg", images[0]), "file2": ("b.jpg", images[1])}))

            h.gate.hold()
            first = post("a")
            await h.gate.wait_rows("detector", 2)
            second = post("b")
            await h.wait_queued("detector", 2)
            second.cancel()  # the client gives up: httpx closes the connection
            with contextlib.suppress(asyncio.CancelledError):
                await second
            await assert_withdrawn(h, first)
            assert (await post("after")).status_code == 200


async def test_grpc_cancelled_call_frees_its_work(serve_local: Any, images: tuple[bytes, bytes]) -> None:
    async with serve_local(with_grpc=True) as h:
        assert h.gate is not None
        first = await hold_one_batch(h, images)
        call = h.grpc_compare(*images, timeout=WAIT_S)
        await h.wait_queued("detector", 2)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await assert_withdrawn(h, first)
