"""The composition root of a serving process: builds and closes backend, admission, batchers, pipeline, store, auth."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from server.analysis.calibration import ScoreCalibration
from server.auth import LocalIssuer, TokenVerifier
from server.errors import Unavailable
from server.files import ensure_private_dir
from server.group import WorkerGroup, WorkerSlot
from server.inference.admission import AdmissionGate, auto_max_in_flight
from server.inference.backend import MODEL_NAMES, InferenceBackend
from server.inference.batched import BatchedRunner
from server.inference.decode_budget import MB, MemoryBudget
from server.inference.factory import PendingBackend, backend_or_pending
from server.inference.pipeline import MAX_ROWS_PER_IMAGE, FacePipeline, PipelineConfig
from server.metrics import Metrics
from server.settings import Settings
from server.store import ScanStore, create_store

log = logging.getLogger(__name__)

# A compare analyses two photos (ScanService.analyze_pair): the rows one admitted request can queue per model.
IMAGES_PER_REQUEST = 2
# The batchers' queue bound over what admitted work can queue at most: it only catches a bug (a stage that queues
# more rows per image than MAX_ROWS_PER_IMAGE declares), it never refuses a request the gate let in. The batchers
# count rows, not items (a stage call is one item of as many rows), so the bound is in rows too.
QUEUE_HEADROOM = 4


def pipeline_config(settings: Settings) -> PipelineConfig:
    """The pipeline's knobs from settings."""
    return PipelineConfig(detector_size=settings.detector_size,
                          detector_score_threshold=settings.detector_score_threshold,
                          min_face_px=settings.min_face_px, threshold=settings.threshold)


def max_in_flight(settings: Settings) -> int:
    """The admission limit: FACEREC_MAX_IN_FLIGHT, or the device's default when it is 0."""
    return settings.max_in_flight or auto_max_in_flight(settings)


def queue_bound(in_flight: int) -> int:
    """Every batcher's safety bound for ``in_flight`` admitted requests."""
    return in_flight * IMAGES_PER_REQUEST * MAX_ROWS_PER_IMAGE * QUEUE_HEADROOM


@dataclass(slots=True)
class Runtime:
    """Everything one serving process shares between HTTP and gRPC."""

    settings: Settings
    metrics: Metrics
    backend: InferenceBackend
    admission: AdmissionGate
    runner: BatchedRunner
    pipeline: FacePipeline
    store: ScanStore
    verifier: TokenVerifier
    local_issuer: LocalIssuer | None
    decode_budget: MemoryBudget
    _closed: bool = field(default=False)
    group: WorkerGroup | None = None  # set in a worker of `facerec serve --workers N`

    @classmethod
    async def start(cls, settings: Settings, *, backend: InferenceBackend | None = None,
                    store: ScanStore | None = None, metrics: Metrics | None = None,
                    worker: WorkerSlot | None = None) -> Runtime:
        """Load models, open the store (migrating it) and start the batchers.

        ``worker``: this process is one worker of a group (``--workers N``): its metrics are exported over the
        whole group and its readiness counts every worker's.
        """
        group = WorkerGroup(worker) if worker is not None else None
        metrics = metrics or (group.metrics() if group is not None else Metrics())
        ensure_private_dir(settings.data_dir)
        local_issuer = LocalIssuer.load_or_create(settings.data_dir) if settings.local_issuer else None
        verifier = TokenVerifier.from_settings(settings, local_issuer)
        backend = backend or await backend_or_pending(settings)
        store = store or create_store(settings)
        try:
            await store.open()
        except Exception:
            await backend.aclose()
            raise
        limit = max_in_flight(settings)
        admission = AdmissionGate(limit, metrics=metrics)
        runner = BatchedRunner(backend, settings, metrics, max_queue=queue_bound(limit))
        await runner.start()
        specs = {m: backend.spec(m) for m in MODEL_NAMES}
        pipeline = FacePipeline(runner, specs, pipeline_config(settings), ScoreCalibration())
        log.info("runtime ready: %s, store %s, at most %d requests in flight, decode memory %d MB",
                 backend.description, type(store).__name__, limit, settings.decode_memory_mb)
        budget = MemoryBudget(settings.decode_memory_mb * MB, metrics)
        rt = cls(settings, metrics, backend, admission, runner, pipeline, store, verifier, local_issuer, budget,
                 group=group)
        if group is not None:
            group.start(rt.local_readiness_report)
        return rt

    async def readiness(self) -> dict[str, bool]:
        """Component health for /health/ready and gRPC health."""
        return (await self.readiness_report())[0]

    async def readiness_report(self) -> tuple[dict[str, bool], dict[str, str]]:
        """Component health and, for each failing component, why (safe to show: no paths, no SQL).

        In a worker of a group, component ``workers`` says whether every worker of the group is ready too.
        """
        components, reasons = await self.local_readiness_report()
        if self.group is not None:
            ok, why, _ = self.group.report(all(components.values()))
            components["workers"] = ok
            if why:
                reasons["workers"] = why
        return components, reasons

    def worker_states(self) -> list[dict[str, Any]] | None:
        """One ``{worker, pid, ready}`` entry per worker of the group (None in a single process)."""
        if self.group is None:
            return None
        own = self.group.statuses().get(self.group.slot.index)
        return self.group.report(own is not None and own.ready)[2]

    async def local_readiness_report(self) -> tuple[dict[str, bool], dict[str, str]]:
        """This process's own component health (what a worker publishes to its group)."""
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
        if self.group is not None:
            await self.group.aclose()
        await self.runner.aclose()
        await self.store.close()
        await self.backend.aclose()
