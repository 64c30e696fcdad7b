"""Runtime wiring that needs no models: the automatic batch size."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from server.runtime import GPU_BATCH_SIZE, auto_max_batch_size
from server.settings import Settings


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
