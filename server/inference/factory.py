"""Which inference backend a process starts, and the stand-in it serves with while that backend cannot start."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from server.errors import Unavailable
from server.inference.backend import MODEL_NAMES, InferenceBackend, ModelSpec
from server.inference.model_config import load_spec
from server.settings import Settings

log = logging.getLogger(__name__)

NDF = npt.NDArray[np.float32]

BACKEND_RETRY_S = 10.0


def on_accelerator(settings: Settings) -> bool:
    """True when inference runs on an accelerator: a Triton server, or onnxruntime's CUDA execution provider
    (device ``auto`` or ``cuda`` with the provider installed). Batch size and admission defaults follow it."""
    if settings.backend == "triton":
        return True
    return settings.device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers()


async def create_backend(settings: Settings) -> InferenceBackend:
    """The configured inference backend (onnxruntime in-process, or a Triton server)."""
    if settings.backend == "triton":
        from server.inference.triton import TritonBackend  # imported lazily: only Triton deployments need it

        return await TritonBackend.connect(settings.triton_url)
    from server.inference.onnxrt import OnnxRuntimeBackend
    from server.topology import worker_cores  # imported here: topology builds on this module

    return await asyncio.to_thread(
        OnnxRuntimeBackend, settings.model_repository, device=settings.device,
        intra_threads=settings.ort_intra_threads, inter_threads=settings.ort_inter_threads,
        precision=settings.precision, cores=worker_cores(settings))


async def backend_or_pending(settings: Settings) -> InferenceBackend:
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
        self.retry_s = retry_s
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
            if self.inner is not None or time.monotonic() - self._last_try < self.retry_s:
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
