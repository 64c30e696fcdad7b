"""HTTP and gRPC requests served by one process share the same batches (the batcher is transport-agnostic).

Deterministic: the backend is held while requests of both transports queue behind the batches in flight, then
released; the next batch takes everything queued, so it holds rows of both. No timing window is involved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from harness import PAIR, WAIT_S

PER_TRANSPORT = 3
# Detector rows of one completed compare of two upright photos: each photo's first pass plus the two small rows of
# its upright check (server/inference/pipeline.py).
ROWS_PER_COMPARE = 2 * 3


async def test_http_and_grpc_requests_share_batches(serve_target: Any, image_bytes: Callable[[str], bytes]) -> None:
    a, b = image_bytes(PAIR[0]), image_bytes(PAIR[1])
    async with serve_target(with_grpc=True, company="mixco") as h:
        gate = h.gate
        assert gate is not None
        detector = h.batcher("detector")
        gate.hold()
        # First requests' batches go in flight and are held, one per batch slot (1 on onnxruntime, 4 with Triton);
        # everything after them queues behind.
        firsts = []
        for k in range(detector.max_concurrent_batches):
            firsts.append(asyncio.ensure_future(h.http_compare(a, b, reference=f"first-{k}")))
            await gate.wait_rows("detector", 2 * (k + 1))
        calls: list[Any] = []
        for i in range(PER_TRANSPORT):
            calls.append(asyncio.ensure_future(h.http_compare(a, b, reference=f"h{i}")))
            calls.append(asyncio.ensure_future(h.grpc_compare(a, b, reference=f"g{i}")))
        await h.wait_queued("detector", 4 * PER_TRANSPORT)
        gate.release()
        results = await asyncio.wait_for(asyncio.gather(*firsts, *calls), WAIT_S)
        http = [r for r in results if hasattr(r, "status_code")]
        n_http = PER_TRANSPORT + len(firsts)
        assert [r.status_code for r in http] == [200] * n_http, [r.text for r in http]
        assert [r.json()["compare_result"] for r in http] == ["Same person"] * n_http
        assert [r.compare_result for r in results if not hasattr(r, "status_code")] == ["Same person"] * PER_TRANSPORT

        m = h.runtime.metrics
        per_source = {src: m.value("facerec_batch_items_total", model="detector", source=src)
                      for src in ("http", "grpc")}
        assert per_source == {"http": ROWS_PER_COMPARE * n_http, "grpc": ROWS_PER_COMPARE * PER_TRANSPORT}
        # The queued first-pass rows (12 <= the batch size 16) left together, at the head of the next batch (the
        # held requests' later rows, arriving after the release, may join it): one batch held both transports.
        assert max(detector.stats.last_batch_sizes) >= 4 * PER_TRANSPORT
        assert m.value("facerec_mixed_batches_total", model="detector") >= 1
        assert "facerec_mixed_batches_total" in m.render()[0].decode()
