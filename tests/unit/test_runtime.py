"""Runtime wiring that needs no models: the automatic batch size, batches of rows with different shapes."""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest

from server.inference.backend import ModelSpec, TensorSpec
from server.metrics import Metrics
from server.runtime import GPU_BATCH_SIZE, BatchedRunner, auto_max_batch_size
from server.settings import Settings

NDF = npt.NDArray[np.float32]


def test_cpu_onnxruntime_does_not_batch() -> None:
    assert auto_max_batch_size(Settings(device="cpu")) == 1


def test_triton_batches() -> None:
    assert auto_max_batch_size(Settings(backend="triton")) == GPU_BATCH_SIZE


def test_auto_follows_cuda_availability() -> None:
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert auto_max_batch_size(Settings(device="auto")) == (GPU_BATCH_SIZE if has_cuda else 1)


def test_negative_batch_size_is_refused() -> None:
    with pytest.raises(ValueError, match="FACEREC_MAX_BATCH_SIZE"):
        Settings(max_batch_size=-1)


# --- rows of different shapes in one batch (the detector's canvas follows the photo) ----------------------------


class _ShapeRecorder:
    """A backend that answers each input row with its own mean and records the shape of every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def spec(self, model: str) -> ModelSpec:
        return ModelSpec(model, 16, (TensorSpec("input", "float32", (3, -1, -1)),),
                         (TensorSpec("out", "float32", (1,)),))

    async def infer(self, model: str, inputs: dict[str, NDF]) -> dict[str, NDF]:
        x = inputs["input"]
        self.calls.append(x.shape)
        return {"out": x.reshape(len(x), -1).mean(axis=1, keepdims=True)}


async def test_a_batch_with_two_canvas_sizes_runs_one_backend_call_per_size() -> None:
    backend = _ShapeRecorder()
    # Four rows fill the batch, so it forms as soon as the last one arrives (no timing involved); the wait is long
    # enough that it never closes the batch first.
    settings = Settings(max_batch_size=4, max_wait_ms=60_000.0)
    runner = BatchedRunner(backend, settings, Metrics())  # type: ignore[arg-type]
    await runner.start()
    try:
        rows = [np.full((1, 3, s, s), v, np.float32) for s, v in ((160, 1.0), (320, 2.0), (160, 3.0), (320, 4.0))]
        outs = await asyncio.gather(*(runner.infer("detector", {"input": r}) for r in rows))
    finally:
        await runner.aclose()
    assert [float(o["out"][0, 0]) for o in outs] == [1.0, 2.0, 3.0, 4.0]
    assert sorted(backend.calls) == [(2, 3, 160, 160), (2, 3, 320, 320)]
