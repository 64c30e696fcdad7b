"""Model runners for the pipeline: per-model dynamic batchers in front of a backend, or the backend directly."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
import numpy.typing as npt

from server.inference.backend import MODEL_NAMES, InferenceBackend
from server.inference.batcher import Batcher
from server.inference.context import RequestContext
from server.inference.factory import on_accelerator
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
    """Splits each stage's batch into rows and submits them to that model's dynamic batcher.

    Rows from concurrent requests (HTTP and gRPC alike) meet in the same batcher and leave as one backend call.
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
                max_concurrent_batches=1 if settings.backend == "onnxruntime" else 4,
            )

    def _call(self, model: str) -> Callable[[list[Row]], Awaitable[list[Row]]]:
        async def run(rows: list[Row]) -> list[Row]:
            # Rows of one batch can differ in shape (the detector's canvas follows the photo: 160/320/480/640):
            # one backend call per shape, in arrival order, each output row back in its place.
            groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
            for i, r in enumerate(rows):
                groups.setdefault(tuple(v.shape for v in r.values()), []).append(i)
            outs: list[Row] = [{} for _ in rows]
            for members in groups.values():
                names = rows[members[0]].keys()
                batch = {k: np.concatenate([rows[i][k] for i in members], axis=0) for k in names}
                out = await self.backend.infer(model, batch)
                for j, i in enumerate(members):
                    outs[i] = {k: v[j : j + 1] for k, v in out.items()}
            return outs

        return run

    async def start(self) -> None:
        for b in self.batchers.values():
            await b.start()

    async def aclose(self) -> None:
        for b in self.batchers.values():
            await b.aclose()

    async def infer(self, model: str, inputs: dict[str, NDF], ctx: RequestContext) -> dict[str, NDF]:
        n = len(next(iter(inputs.values())))
        batcher = self.batchers[model]
        rows = [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(n)]
        tasks = [asyncio.ensure_future(batcher.submit(r, source=ctx.source, deadline=ctx.deadline)) for r in rows]
        try:
            outs = await asyncio.gather(*tasks)
        except BaseException:
            # gather leaves the other rows running when one fails (DeadlineExceeded, a failed batch): their
            # work is useless now, so withdraw it; the batcher drops cancelled waiters unrun.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return {k: np.concatenate([o[k] for o in outs], axis=0) for k in outs[0]}
