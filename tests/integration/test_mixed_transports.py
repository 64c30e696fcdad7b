"""HTTP and gRPC requests served by one process share the same batches (the batcher is transport-agnostic)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import httpx

from server.api.grpc.gen.facerec.v1 import face_recognition_pb2 as pb
from server.api.grpc.gen.facerec.v1 import face_recognition_pb2_grpc as pb_grpc
from server.api.grpc.server import start_grpc_server
from server.app import create_app
from server.auth import ALL_ROLES, LOCAL_ISSUER
from server.service import ScanService

CONCURRENT_PER_TRANSPORT = 8
# Detector rows of one compare of two upright photos: each photo's first pass plus the two small rows of its upright
# check (server/inference/pipeline.py).
DETECTOR_ROWS_PER_COMPARE = 2 * 3


async def test_http_and_grpc_requests_share_batches(start_runtime: Any, image_bytes: Callable[[str], bytes]) -> None:
    # A generous wait window makes mixing deterministic enough on a loaded 2-core machine.
    runtime = await start_runtime(max_wait_ms=60.0)
    server = await start_grpc_server(runtime, ScanService(runtime), "127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    issuer = runtime.local_issuer
    assert issuer is not None
    token = issuer.mint("mixco", "alice", ALL_ROLES, 600, runtime.settings.auth_audience, LOCAL_ISSUER)
    a, b = image_bytes("obama_01_portrait_2012.jpg"), image_bytes("obama_02_congress_2009.jpg")
    try:
        stub = pb_grpc.FaceRecognitionStub(channel)
        transport = httpx.ASGITransport(app=create_app(runtime.settings, runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://facerec.test", timeout=120) as client:

            async def over_http(i: int) -> str:
                r = await client.post("/v1/compare_face", headers={"Authorization": f"Bearer {token}"},
                                      data={"channel": "WEB", "reference": f"h{i}"},
                                      files={"file1": ("a.jpg", a), "file2": ("b.jpg", b)})
                assert r.status_code == 200, r.text
                return str(r.json()["compare_result"])

            async def over_grpc(i: int) -> str:
                req = pb.CompareFacesRequest(channel="WEB", reference=f"g{i}", file1=a, file2=b)
                resp = await stub.CompareFaces(req, metadata=(("authorization", f"Bearer {token}"),), timeout=120)
                return str(resp.compare_result)

            results = await asyncio.gather(*(over_http(i) for i in range(CONCURRENT_PER_TRANSPORT)),
                                           *(over_grpc(i) for i in range(CONCURRENT_PER_TRANSPORT)))
        assert results == ["Same person"] * (2 * CONCURRENT_PER_TRANSPORT)
        m = runtime.metrics
        per_source = {src: m.value("facerec_batch_items_total", model="detector", source=src)
                      for src in ("http", "grpc")}
        expected = DETECTOR_ROWS_PER_COMPARE * CONCURRENT_PER_TRANSPORT
        assert per_source == {"http": expected, "grpc": expected}
        mixed = sum(m.value("facerec_mixed_batches_total", model=model)
                    for model in ("detector", "landmarker", "embedder"))
        assert mixed >= 1, "no batch held both HTTP and gRPC items"
        text = m.render()[0].decode()
        assert "facerec_mixed_batches_total" in text
    finally:
        await channel.close()
        await server.stop(0)
        await runtime.aclose()
