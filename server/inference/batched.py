"""Model runners for the pipeline: per-model dynamic batchers in front of a backend, or the backend directly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np
import numpy.typing as npt

from server.errors import InferenceFailed
from server.inference.backend import MODEL_NAMES, InferenceBackend
from server.inference.batcher import Batcher
from server.inference.context import RequestContext
from server.inference.factory import on_accelerator
from server.inference.model_config import MAX_CONCURRENT_TRITON_CALLS
from server.metrics import Metrics
from server.settings import Settings

NDF = npt.NDArray[np.float32]
Row = dict[str, NDF]

GPU_BATCH_SIZE = 16


def auto_max_batch_size(settings: Settings) -> int:
    """Batch size when FACEREC_MAX_BATCH_SIZE is 0: 16 where batching pays (CUDA, Triton), 1 on CPU.

    On CPU every model gets slower per image as the batch grows (detector 9.8 -> 15.7 ms, embedder 19.6 -> 23.3 ms
    from batch 1 to 16, one thread each), and the batched server measured 0.75x the unbatched one on 2 cores
    (bench/README.md). The batcher still queues, bounds and times out work at size 1.
    """
    return GPU_BATCH_SIZE if on_accelerator(settings) else 1


class DirectRunner:
    """The backend itself as the pipeline's runner: one call per stage, no batching across requests.

    For the CLI, tools and tests that run the pipeline without a server; the context is not needed there (no
    queue to drop expired rows from).
    """

    def __init__(self, backend: InferenceBackend) -> None:
        self.backend = backend

    async def infer(self, model: str, inputs: dict[str, NDF], ctx: RequestContext) -> dict[str, NDF]:
        return await self.backend.infer(model, inputs)


class BatchedRunner:
    """Submits each stage's batch to that model's dynamic batcher as one item of as many rows.

    Items from concurrent requests (HTTP and gRPC alike) meet in the same batcher and leave as one backend call per
    input shape. One item per stage call (not one per row) keeps the event loop's cost per call flat in the rows:
    a task, a future and a deadline timer each per row was a measurable share of the host time (bench.host).
    ``max_queue`` bounds every batcher's queue; it is a safety limit the runtime derives from the admission limit
    (admitted work never reaches it), not a refusal point.
    """

    def __init__(self, backend: InferenceBackend, settings: Settings, metrics: Metrics, *, max_queue: int) -> None:
        self.backend = backend
        self.batchers: dict[str, Batcher[Row, Row]] = {}
        wanted = settings.max_batch_size or auto_max_batch_size(settings)
        for model in MODEL_NAMES:
            cap = backend.spec(model).max_batch_size or wanted
            self.batchers[model] = Batcher(
                self._call(model), name=model, max_batch_size=max(1, min(wanted, cap)),
                max_wait_ms=settings.max_wait_ms, max_queue=max_queue, metrics=metrics,
                # With Triton the server batches too; overlapping our calls lets its queue fill.
                max_concurrent_batches=1 if settings.backend == "onnxruntime" else MAX_CONCURRENT_TRITON_CALLS,
            )

    def _call(self, model: str) -> Callable[[list[Row]], Awaitable[list[Row]]]:
        async def run(items: list[Row]) -> list[Row]:
            # Items of one batch can differ in shape (the detector's canvas follows the photo: 160/320/480/640):
            # one backend call per shape, in arrival order, each item's output rows back in its place. An item is
            # never split across batches, but one larger than the batch size (it ran alone) is cut into backend
            # calls of at most that size: what a backend is sent never exceeds it (Triton's max_batch_size; on
            # CPU, batch size 1 keeps every model call at one row, as measured fastest there).
            limit = self.batchers[model].max_batch_size
            groups: dict[tuple[tuple[str, tuple[int, ...]], ...], list[int]] = {}
            for i, item in enumerate(items):
                groups.setdefault(tuple((k, v.shape[1:]) for k, v in item.items()), []).append(i)
            outs: list[Row] = [{} for _ in items]
            for members in groups.values():
                names = items[members[0]].keys()
                parts = [items[i] for i in members]
                batch = ({k: parts[0][k] for k in names} if len(parts) == 1
                         else {k: np.concatenate([p[k] for p in parts], axis=0) for k in names})
                total = len(next(iter(batch.values())))
                out = await self._infer_chunked(model, batch, total, limit)
                start = 0
                for i in members:
                    n = len(next(iter(items[i].values())))
                    outs[i] = {k: v[start : start + n] for k, v in out.items()}
                    start += n
            return outs

        return run

    async def _infer_chunked(self, model: str, batch: Row, total: int, limit: int) -> Row:
        if total <= limit:
            out = await self.backend.infer(model, batch)
        else:
            chunks = [await self.backend.infer(model, {k: v[s : s + limit] for k, v in batch.items()})
                      for s in range(0, total, limit)]
            out = {k: np.concatenate([c[k] for c in chunks], axis=0) for k in chunks[0]}
        for k, v in out.items():
            # A backend answering with the wrong number of rows would hand one item's rows to another.
            if len(v) != total:
                raise InferenceFailed(f"{model} returned {len(v)} rows of {k!r} for {total} inputs")
        return out

    async def start(self) -> None:
        for b in self.batchers.values():
            await b.start()

    async def aclose(self) -> None:
        for b in self.batchers.values():
            await b.aclose()

    async def infer(self, model: str, inputs: dict[str, NDF], ctx: RequestContext) -> dict[str, NDF]:
        n = len(next(iter(inputs.values())))
        # One waiter for the whole stage batch: a request that leaves cancels it, and the batcher drops it unrun.
        return await self.batchers[model].submit(inputs, rows=n, source=ctx.source, deadline=ctx.deadline)
