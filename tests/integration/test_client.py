"""The typed Python client (clients/python) against the real app: async HTTP over httpx's ASGI transport and async
gRPC against a real grpc.aio server, real models, real SQLite. Overload answers are retried after the server's
own hint (problem ``retry_after_ms`` over HTTP, trailer ``facerec-retry-after-ms`` over gRPC)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from facerec_client import (
    ApiError,
    AsyncClient,
    AsyncGrpcClient,
    Channel,
    Comparison,
    QualityFilter,
    RetryPolicy,
    Scan,
    ScanFilter,
    Verdict,
)
from harness import WAIT_S, Harness, base_settings, serve

from server.app import create_app
from server.inference.backend import InferenceBackend

pytestmark = pytest.mark.asyncio(loop_scope="module")

SAME = ("obama_01_portrait_2012.jpg", "obama_02_congress_2009.jpg")
NO_FACE = "no_face_rocket.jpg"


@dataclass
class Served:
    """The harness of a served runtime and the typed clients on it (HTTP in-process, gRPC on loopback)."""

    h: Harness

    @property
    def runtime(self) -> Any:
        return self.h.runtime

    def token(self) -> str:
        return self.h.token("clientco", "carol")

    def http(self, **kwargs: Any) -> AsyncClient:
        app = create_app(self.h.runtime.settings, self.h.runtime)
        return AsyncClient("http://facerec.test", self.token(), transport=httpx.ASGITransport(app=app), **kwargs)

    def grpc_client(self, **kwargs: Any) -> AsyncGrpcClient:
        assert self.h.grpc_server is not None
        return AsyncGrpcClient(f"127.0.0.1:{self.h.grpc_server.port}", self.token(), **kwargs)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(backend: InferenceBackend, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    async with serve(base_settings(tmp_path_factory.mktemp("client")), backend=backend, with_grpc=True) as h:
        yield Served(h)


@pytest_asyncio.fixture(loop_scope="module")
async def overloaded(backend: InferenceBackend, tmp_path: Path,
                     image_bytes: Callable[[str], bytes]) -> AsyncIterator[Served]:
    # One compare in flight at most, and that one held at the backend gate: every other compare is refused at once
    # with 429 / RESOURCE_EXHAUSTED and a retry hint, deterministically (no timing involved).
    async with serve(base_settings(tmp_path / "data", max_in_flight=1), backend=backend, with_grpc=True) as h:
        assert h.gate is not None
        h.gate.hold()
        held = asyncio.ensure_future(h.http_compare(image_bytes(SAME[0]), image_bytes(SAME[1])))
        await h.gate.wait_rows("detector", 1)
        try:
            yield Served(h)
        finally:
            h.gate.release()
            assert (await asyncio.wait_for(held, WAIT_S)).status_code == 200


TRANSPORTS = ["http", "grpc"]


def client_of(served: Served, transport: str, **kwargs: Any) -> AsyncClient | AsyncGrpcClient:
    return served.http(**kwargs) if transport == "http" else served.grpc_client(**kwargs)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_round_trip_with_typed_results(served: Served, image_bytes: Callable[[str], bytes],
                                             transport: str) -> None:
    ref = f"client-{transport}-{uuid.uuid4().hex[:8]}"
    async with client_of(served, transport) as api:
        result = await api.compare(image_bytes(SAME[0]), image_bytes(SAME[1]), channel=Channel.WEB, reference=ref)
        assert isinstance(result, Comparison)
        assert result.compare_result is Verdict.SAME and result.same_person
        assert 0.5 <= result.compare_similarity <= 1.0
        assert result.channel is Channel.WEB and result.reference == ref
        assert len(result.face1.landmark_68) == 68 and result.face1.x1 < result.face1.x2
        assert result.created.tzinfo is not None

        scan = await api.get_scan(result.id)
        assert isinstance(scan, Scan)
        assert (scan.id, scan.reference, scan.compare_similarity) == (result.id, ref, result.compare_similarity)
        assert scan.updated_date is None and scan.updated_by_id is None
        assert scan.face1 == result.face1

        updated = await api.update_scan(result.id, sales_channel=Channel.MOBILE, reference=ref + "-b")
        assert (updated.sales_channel, updated.reference, updated.updated_by_id) == (Channel.MOBILE, ref + "-b",
                                                                                      "carol")
        assert updated.updated_date is not None

        page = await api.list_scans(ScanFilter(reference=ref + "-b", sales_channel=Channel.MOBILE))
        assert [s.id for s in page.content] == [result.id]
        assert (page.total_elements, page.number, page.first, page.last) == (1, 0, True, True)

        await api.delete_scan(result.id)
        with pytest.raises(ApiError) as err:
            await api.get_scan(result.id)
    assert err.value.code == "not_found"
    assert (err.value.status, err.value.grpc_code) == ((404, None) if transport == "http" else (None, "NOT_FOUND"))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_errors_carry_the_stable_code_and_field(served: Served, image_bytes: Callable[[str], bytes],
                                                      transport: str) -> None:
    async with client_of(served, transport) as api:
        with pytest.raises(ApiError) as no_face:
            await api.compare(image_bytes(SAME[0]), image_bytes(NO_FACE), reference="client-no-face")
        with pytest.raises(ApiError) as bad_id:
            await api.get_scan("not-a-uuid")
    assert (no_face.value.code, no_face.value.field) == ("no_face", "file2")
    assert not no_face.value.retryable
    assert bad_id.value.code == "invalid_id"
    if transport == "http":
        assert no_face.value.status == 422 and no_face.value.request_id
    else:
        assert no_face.value.grpc_code == "FAILED_PRECONDITION"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_threshold_and_quality_filter(served: Served, image_bytes: Callable[[str], bytes],
                                            transport: str) -> None:
    # obama_04 looks down: accepted at LOW, refused for its pose at MEDIUM.
    down, portrait = image_bytes("obama_04_oval_office_2016.jpg"), image_bytes(SAME[0])
    async with client_of(served, transport) as api:
        default = await api.compare(down, portrait, reference="client-decision")
        assert (default.threshold, default.quality_filter) == (0.5, QualityFilter.LOW)
        comps = default.face1.quality_components
        assert comps is not None and 0 < comps.pose < 0.2 and comps.size > 0.5
        strict = await api.compare(down, portrait, reference="client-decision", threshold=1.0,
                                   quality_filter="low")
        assert strict.compare_result is Verdict.DIFFERENT and strict.threshold == 1.0
        assert strict.compare_similarity == default.compare_similarity
        scan = await api.get_scan(strict.id)
        assert (scan.threshold, scan.quality_filter) == (1.0, QualityFilter.LOW)
        assert scan.face1.quality_components == comps
        with pytest.raises(ApiError) as low:
            await api.compare(down, portrait, reference="client-decision", quality_filter=QualityFilter.MEDIUM)
    assert (low.value.code, low.value.field) == ("low_quality", "file1")
    assert low.value.failing_components == {"file1": ("pose",)}
    assert not low.value.retryable


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_overload_is_retried_after_the_servers_hint(overloaded: Served, image_bytes: Callable[[str], bytes],
                                                          transport: str) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # records the waits instead of sleeping them
        waits.append(seconds)

    policy = RetryPolicy(retries=2, jitter=0.0, backoff_s=99.0)  # a back-off would show as 99 s waits
    async with client_of(overloaded, transport, retry=policy, sleep=sleep) as api:
        with pytest.raises(ApiError) as err:
            await api.compare(image_bytes(SAME[0]), image_bytes(SAME[1]), reference="client-overload")
    assert err.value.code == "overloaded" and err.value.retryable
    assert (err.value.status if transport == "http" else err.value.grpc_code) == (
        429 if transport == "http" else "RESOURCE_EXHAUSTED")
    hint = err.value.retry_after_s
    assert hint is not None and 0.05 <= hint < 99.0  # the server's estimate, in ms precision
    assert waits == [hint, hint]  # two retries, each after the server's own hint
    rejected = overloaded.runtime.metrics.value("facerec_requests_rejected_total", reason="overloaded")
    assert rejected >= 3
