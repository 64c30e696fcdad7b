"""In-process onnxruntime backend: one session per model, CUDA execution provider when present, else CPU."""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from server.errors import InferenceFailed, Unavailable
from server.inference.backend import MODEL_NAMES, ModelSpec
from server.inference.model_config import load_spec
from server.inference.precision import (
    INT8_MODELS,
    cpu_flags,
    has_int8_kernels,
    int8_file_is_exact,
    model_file,
    resolve_precision,
    weight_bits,
)
from server.settings import Device, Precision

log = logging.getLogger(__name__)

_ORT_STATE = ort.capi.onnxruntime_pybind11_state
# onnxruntime's own errors are plain Exception subclasses of its pybind module, not RuntimeError: a wrong input
# shape raises InvalidArgument, a corrupt file InvalidProtobuf. These (and nothing broader) are caught below.
ORT_ERRORS: tuple[type[Exception], ...] = (
    *(obj for obj in vars(_ORT_STATE).values() if isinstance(obj, type) and issubclass(obj, Exception)),
    RuntimeError, ValueError,
)
_LOAD_ERRORS: tuple[type[Exception], ...] = (*ORT_ERRORS, OSError)


def choose_providers(device: Device) -> list[str]:
    """Execution providers to try, best first; CUDA only when onnxruntime was built with it."""
    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise Unavailable("FACEREC_DEVICE=cuda but onnxruntime has no CUDA execution provider")
    return ["CPUExecutionProvider"]


def auto_intra_threads(sessions: int, providers: list[str], cores: int | None = None) -> int:
    """Threads per session when none are configured: the cores shared out between the sessions.

    The three models run concurrently (one worker each), so giving every session a pool of all cores makes
    3x oversubscribed, spinning pools: on 2 cores that cut server throughput by 40 % (bench/README.md). On CUDA the
    CPU threads only feed the GPU, so one is plenty. ``cores``: this process's share of the machine (a worker of
    ``facerec serve --workers N`` gets 1/N of it); None means every core.
    """
    if providers[0] == "CUDAExecutionProvider":
        return 1
    return max(1, (cores or os.cpu_count() or 1) // max(sessions, 1))


class OnnxRuntimeBackend:
    """Runs the model repository's ONNX files in this process.

    ``precision`` picks the file per model (``server/inference/precision.py``): with ``auto``, the int8 build on
    the CPU provider of an x86 CPU with AVX2 or VNNI, fp32 otherwise; both take and return the same float32
    tensors.
    """

    def __init__(self, repository: Path, *, device: Device = "auto", intra_threads: int = 0,
                 inter_threads: int = 1, models: tuple[str, ...] = MODEL_NAMES,
                 precision: Precision = "auto", cores: int | None = None) -> None:
        self._specs: dict[str, ModelSpec] = {}
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._files: dict[str, Path] = {}
        providers = choose_providers(device)
        flags = cpu_flags()
        resolved = resolve_precision(precision, backend="onnxruntime", provider=providers[0],
                                     int8_cpu=has_int8_kernels(flags))
        for name in models:
            path = model_file(repository, name, resolved)
            if precision == "auto" and not path.is_file() and name in INT8_MODELS:
                # A repository built before int8 existed still serves, in fp32; an explicit int8 fails below.
                log.warning("model %s: no int8 build at %s; running it in fp32 (run `facerec models`)", name, path)
                path = model_file(repository, name, "fp32")
            self._files[name] = path
            if not path.is_file():
                log.error("model %s: %s is missing", name, path)
                raise Unavailable(f"model {name!r} ({path.name}) is missing: run `facerec models` (make models)")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = intra_threads or auto_intra_threads(len(models), providers, cores)
            opts.inter_op_num_threads = inter_threads
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            try:
                self._specs[name] = load_spec(repository, name)
                session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
                if precision == "auto" and path != model_file(repository, name, "fp32"):
                    bits = weight_bits(session.get_modelmeta().custom_metadata_map)
                    if not int8_file_is_exact(flags, bits):
                        # A file built before 7-bit weights: its u8s8 kernels would saturate on this CPU.
                        log.warning("model %s: %s has full-range int8 weights, which saturate without VNNI; "
                                    "running it in fp32 (run `facerec models` to rebuild it)", name, path)
                        path = self._files[name] = model_file(repository, name, "fp32")
                        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
                self._sessions[name] = session
            except _LOAD_ERRORS as exc:
                # The log names the file and onnxruntime's message; the error (shown on /health/ready) only
                # the model, so no file system path reaches an unauthenticated caller.
                log.error("model %s cannot be loaded from %s: %s", name, path, exc)
                raise Unavailable(f"model {name!r} cannot be loaded (corrupt or incompatible file)") from exc
        active = sorted({p for s in self._sessions.values() for p in s.get_providers()[:1]})
        int8 = [m for m, f in self._files.items() if f.name != model_file(repository, m, "fp32").name]
        self._description = f"onnxruntime {ort.__version__} ({', '.join(active)}" + (
            f"; int8: {', '.join(int8)})" if int8 else ")")
        log.info("inference backend: %s", self._description)
        # One worker per model: a model's batches run in order, different models overlap.
        self._pool = ThreadPoolExecutor(max_workers=len(models), thread_name_prefix="ort")

    @property
    def description(self) -> str:
        return self._description

    @property
    def model_files(self) -> dict[str, Path]:
        """The ONNX file each model runs from (its precision is in the name)."""
        return dict(self._files)

    @property
    def providers(self) -> list[str]:
        """Active execution provider per session (first of each)."""
        return [s.get_providers()[0] for s in self._sessions.values()]

    def spec(self, model: str) -> ModelSpec:
        return self._specs[model]

    def infer_sync(self, model: str, inputs: dict[str, npt.NDArray[np.float32]]) -> dict[str, npt.NDArray[np.float32]]:
        """Run one batch on the calling thread."""
        session = self._sessions[model]
        try:
            outs = session.run(None, inputs)
        except ORT_ERRORS as exc:
            log.exception("onnxruntime failed on %s", model)
            raise InferenceFailed(f"{model} inference failed") from exc
        return {o.name: np.asarray(v) for o, v in zip(session.get_outputs(), outs, strict=True)}

    async def infer(self, model: str, inputs: dict[str, npt.NDArray[np.float32]]) -> dict[str, npt.NDArray[np.float32]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.infer_sync, model, inputs)

    async def ready(self) -> bool:
        return len(self._sessions) == len(self._specs) > 0

    async def aclose(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._sessions.clear()
