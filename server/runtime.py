"""Builds and closes what a serving process shares: backend, per-model batchers, pipeline, store, auth, metrics."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from server.analysis.calibration import ScoreCalibration
from server.auth import LocalIssuer, TokenVerifier
from server.errors import Unavailable
from server.inference.backend import MODEL_NAMES, InferenceBackend
from server.inference.batcher import Batcher
from server.inference.pipeline import FacePipeline, PipelineConfig
from server.metrics import Metrics
from server.settings import Settings
from server.store import ScanStore, create_store

log = logging.getLogger(__name__)

NDF = npt.NDArray[np.float32]
Row = dict[str, NDF]


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who is asking (for the mixed-batch metric) and until when (absolute ``loop.time()``)."""

    source: str = "internal"
    deadline: float | None = None


# Set by the service for each request; the batched runner reads it so deadlines and sources reach the batcher
# without threading them through every pipeline stage.
call_context: contextvars.ContextVar[CallContext] = contextvars.ContextVar(
    "call_context", default=CallContext()  # noqa: B039 - CallContext is a frozen dataclass
)


class BatchedRunner:
    """Splits each stage's batch into rows and submits them to that model's dynamic batcher.

    Rows from concurrent requests (HTTP and gRPC alike) meet in the same batcher and leave as one backend call.
    """

    def __init__(self, backend: InferenceBackend, settings: Settings, metrics: Metrics) -> None:
        self.backend = backend
        self.batchers: dict[str, Batcher[Row, Row]] = {}
        for model in MODEL_NAMES:
            cap = backend.spec(model).max_batch_size or settings.max_batch_size
            self.batchers[model] = Batcher(
                self._call(model), name=model, max_batch_size=max(1, min(settings.max_batch_size, cap)),
                max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue, metrics=metrics,
                # With Triton the server batches too; overlapping our calls lets its queue fill.
                max_concurrent_batches=1 if settings.backend == "onnxruntime" else 4,
            )

    def _call(self, model: str):  # type: ignore[no-untyped-def]
        async def run(rows: list[Row]) -> list[Row]:
            names = rows[0].keys()
            batch = {k: np.concatenate([r[k] for r in rows], axis=0) for k in names}
            out = await self.backend.infer(model, batch)
            return [{k: v[i : i + 1] for k, v in out.items()} for i in range(len(rows))]

        return run

    async def start(self) -> None:
        for b in self.batchers.values():
            await b.start()

    async def aclose(self) -> None:
        for b in self.batchers.values():
            await b.aclose()

    async def infer(self, model: str, inputs: dict[str, NDF]) -> dict[str, NDF]:
        ctx = call_context.get()
        n = len(next(iter(inputs.values())))
        batcher = self.batchers[model]
        rows = [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(n)]
        outs = await asyncio.gather(*(batcher.submit(r, source=ctx.source, deadline=ctx.deadline) for r in rows))
        return {k: np.concatenate([o[k] for o in outs], axis=0) for k in outs[0]}


def pipeline_config(settings: Settings) -> PipelineConfig:
    """The pipeline's knobs from settings."""
    return PipelineConfig(detector_size=settings.detector_size,
                          detector_score_threshold=settings.detector_score_threshold,
                          min_face_px=settings.min_face_px, threshold=settings.threshold)


async def create_backend(settings: Settings) -> InferenceBackend:
    """The configured inference backend (onnxruntime in-process, or a Triton server)."""
    if settings.backend == "triton":
        from server.inference.triton import TritonBackend  # imported lazily: only Triton deployments need it

        return await TritonBackend.connect(settings.triton_url)
    from server.inference.onnxrt import OnnxRuntimeBackend

    return await asyncio.to_thread(
        OnnxRuntimeBackend, settings.model_repository, device=settings.device,
        intra_threads=settings.ort_intra_threads, inter_threads=settings.ort_inter_threads)


@dataclass(slots=True)
class Runtime:
    """Everything one serving process shares between HTTP and gRPC."""

    settings: Settings
    metrics: Metrics
    backend: InferenceBackend
    runner: BatchedRunner
    pipeline: FacePipeline
    store: ScanStore
    verifier: TokenVerifier
    local_issuer: LocalIssuer | None
    _closed: bool = field(default=False)

    @classmethod
    async def start(cls, settings: Settings, *, backend: InferenceBackend | None = None,
                    store: ScanStore | None = None, metrics: Metrics | None = None) -> Runtime:
        """Load models, open the store (migrating it) and start the batchers."""
        metrics = metrics or Metrics()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        local_issuer = LocalIssuer.load_or_create(settings.data_dir) if settings.local_issuer else None
        verifier = TokenVerifier.from_settings(settings, local_issuer)
        backend = backend or await create_backend(settings)
        store = store or create_store(settings)
        try:
            await store.open()
        except Exception:
            await backend.aclose()
            raise
        runner = BatchedRunner(backend, settings, metrics)
        await runner.start()
        specs = {m: backend.spec(m) for m in MODEL_NAMES}
        pipeline = FacePipeline(runner, specs, pipeline_config(settings), ScoreCalibration())
        log.info("runtime ready: %s, store %s", backend.description, type(store).__name__)
        return cls(settings, metrics, backend, runner, pipeline, store, verifier, local_issuer)

    async def readiness(self) -> dict[str, bool]:
        """Component health for /health/ready and gRPC health."""
        try:
            models = await self.backend.ready()
        except Unavailable:
            models = False
        try:
            db = await self.store.ping()
        except Unavailable:
            db = False
        batchers = all(b.healthy for b in self.runner.batchers.values())
        return {"models": models, "store": db, "batchers": batchers}

    async def aclose(self) -> None:
        """Drain the batchers, then close the store and the backend."""
        if self._closed:
            return
        self._closed = True
        await self.runner.aclose()
        await self.store.close()
        await self.backend.aclose()
