"""Builds and closes what a serving process shares: backend, per-model batchers, pipeline, store, auth, metrics."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from server.analysis.calibration import ScoreCalibration
from server.auth import LocalIssuer, TokenVerifier
from server.errors import Unavailable
from server.files import ensure_private_dir
from server.inference.backend import MODEL_NAMES, InferenceBackend, ModelSpec, load_spec
from server.inference.batcher import Batcher
from server.inference.decode_budget import MB, MemoryBudget
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


GPU_BATCH_SIZE = 16


def auto_max_batch_size(settings: Settings) -> int:
    """Batch size when FACEREC_MAX_BATCH_SIZE is 0: 16 where batching pays (CUDA, Triton), 1 on CPU.

    On CPU every model gets slower per image as the batch grows (detector 9.8 -> 15.7 ms, embedder 19.6 -> 23.3 ms
    from batch 1 to 16, one thread each), and the batched server measured 0.75x the unbatched one on 2 cores
    (bench/README.md). The batcher still queues, bounds and times out work at size 1.
    """
    if settings.backend == "triton":
        return GPU_BATCH_SIZE
    if settings.device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        return GPU_BATCH_SIZE
    return 1


class BatchedRunner:
    """Splits each stage's batch into rows and submits them to that model's dynamic batcher.

    Rows from concurrent requests (HTTP and gRPC alike) meet in the same batcher and leave as one backend call.
    """

    def __init__(self, backend: InferenceBackend, settings: Settings, metrics: Metrics) -> None:
        self.backend = backend
        self.batchers: dict[str, Batcher[Row, Row]] = {}
        wanted = settings.max_batch_size or auto_max_batch_size(settings)
        for model in MODEL_NAMES:
            cap = backend.spec(model).max_batch_size or wanted
            self.batchers[model] = Batcher(
                self._call(model), name=model, max_batch_size=max(1, min(wanted, cap)),
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

    def admit(self, model: str, n: int) -> None:
        """Raise ``Overloaded`` now unless ``model``'s queue has room for ``n`` more rows."""
        self.batchers[model].admit(n)

    async def infer(self, model: str, inputs: dict[str, NDF]) -> dict[str, NDF]:
        ctx = call_context.get()
        n = len(next(iter(inputs.values())))
        batcher = self.batchers[model]
        rows = [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(n)]
        tasks = [asyncio.ensure_future(batcher.submit(r, source=ctx.source, deadline=ctx.deadline)) for r in rows]
        try:
            outs = await asyncio.gather(*tasks)
        except BaseException:
            # gather leaves the other rows running when one fails (Overloaded, DeadlineExceeded, a failed
            # batch): their work is useless now, so withdraw it; the batcher drops cancelled waiters unrun.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return {k: np.concatenate([o[k] for o in outs], axis=0) for k in outs[0]}


async def _backend_or_pending(settings: Settings) -> InferenceBackend:
    """The configured backend; when it cannot start but the local repository has the model configs, a
    :class:`PendingBackend` that reports why and keeps retrying (the process starts not-ready)."""
    try:
        return await create_backend(settings)
    except Unavailable as exc:
        try:
            specs = {m: load_spec(settings.model_repository, m) for m in MODEL_NAMES}
        except (OSError, ValueError, KeyError):
            raise exc from None  # nothing to shape the batchers with: refuse to start, with the first reason
        log.error("inference backend unavailable: %s; serving not-ready (/health/ready says why) and retrying "
                  "every %.0f s", exc.detail, BACKEND_RETRY_S)
        return PendingBackend(settings, exc.detail, specs)


def pipeline_config(settings: Settings) -> PipelineConfig:
    """The pipeline's knobs from settings."""
    return PipelineConfig(detector_size=settings.detector_size,
                          detector_score_threshold=settings.detector_score_threshold,
                          min_face_px=settings.min_face_px, threshold=settings.threshold)


BACKEND_RETRY_S = 10.0


class PendingBackend:
    """Stands in for a backend that could not start (a model file that does not load, Triton not reachable).

    The process keeps serving: ``ready()`` is False (so /health/ready and gRPC health say NOT_SERVING, with
    :attr:`reason`), every inference is ``Unavailable`` (503), and a readiness check at most every
    ``retry_s`` seconds tries to start the real backend again, so a fixed model or a Triton that comes up later
    heals the process without a restart. Model specs come from the local repository's ``config.pbtxt``.
    """

    def __init__(self, settings: Settings, reason: str, specs: dict[str, ModelSpec], *,
                 retry_s: float = BACKEND_RETRY_S) -> None:
        self.settings = settings
        self.reason = reason
        self.inner: InferenceBackend | None = None
        self._specs = specs
        self._retry_s = retry_s
        self._last_try = time.monotonic()
        self._lock = asyncio.Lock()

    @property
    def description(self) -> str:
        return self.inner.description if self.inner is not None else f"unavailable ({self.reason})"

    def spec(self, model: str) -> ModelSpec:
        return self._specs[model]

    async def infer(self, model: str, inputs: dict[str, NDF]) -> dict[str, NDF]:
        if self.inner is None:
            raise Unavailable("inference backend unavailable")
        return await self.inner.infer(model, inputs)

    async def ready(self) -> bool:
        if self.inner is None:
            await self._retry()
        return self.inner is not None and await self.inner.ready()

    async def _retry(self) -> None:
        async with self._lock:
            if self.inner is not None or time.monotonic() - self._last_try < self._retry_s:
                return
            self._last_try = time.monotonic()
            try:
                self.inner = await create_backend(self.settings)
            except Unavailable as exc:
                self.reason = exc.detail
                log.warning("inference backend still unavailable: %s", exc.detail)
            else:
                log.info("inference backend recovered: %s", self.inner.description)

    async def aclose(self) -> None:
        if self.inner is not None:
            await self.inner.aclose()


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
    decode_budget: MemoryBudget
    _closed: bool = field(default=False)

    @classmethod
    async def start(cls, settings: Settings, *, backend: InferenceBackend | None = None,
                    store: ScanStore | None = None, metrics: Metrics | None = None) -> Runtime:
        """Load models, open the store (migrating it) and start the batchers."""
        metrics = metrics or Metrics()
        ensure_private_dir(settings.data_dir)
        local_issuer = LocalIssuer.load_or_create(settings.data_dir) if settings.local_issuer else None
        verifier = TokenVerifier.from_settings(settings, local_issuer)
        backend = backend or await _backend_or_pending(settings)
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
        budget = MemoryBudget(settings.decode_memory_mb * MB, metrics)
        return cls(settings, metrics, backend, runner, pipeline, store, verifier, local_issuer, budget)

    async def readiness(self) -> dict[str, bool]:
        """Component health for /health/ready and gRPC health."""
        return (await self.readiness_report())[0]

    async def readiness_report(self) -> tuple[dict[str, bool], dict[str, str]]:
        """Component health and, for each failing component, why (safe to show: no paths, no SQL)."""
        reasons: dict[str, str] = {}
        try:
            models = await self.backend.ready()
        except Unavailable:
            models = False
        if not models:
            pending = self.backend if isinstance(self.backend, PendingBackend) else None
            reasons["models"] = pending.reason if pending is not None else "inference backend not ready"
        try:
            db = await self.store.ping()
        except Unavailable:
            db = False
        if not db:
            reasons["store"] = "database unreachable"
        batchers = all(b.healthy for b in self.runner.batchers.values())
        if not batchers:
            reasons["batchers"] = "a batcher stopped"
        return {"models": models, "store": db, "batchers": batchers}, reasons

    async def aclose(self) -> None:
        """Drain the batchers, then close the store and the backend."""
        if self._closed:
            return
        self._closed = True
        await self.runner.aclose()
        await self.store.close()
        await self.backend.aclose()
