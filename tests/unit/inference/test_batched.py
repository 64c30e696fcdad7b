"""The pipeline's runners on a fake backend: batch-size policy, rows to the batchers, the request context."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest

from server import errors
from server.inference.backend import MODEL_NAMES, ModelSpec, TensorSpec
from server.inference.batched import GPU_BATCH_SIZE, BatchedRunner, DirectRunner, auto_max_batch_size
from server.inference.context import INTERNAL, RequestContext
from server.metrics import Metrics
from server.settings import Settings

NDF = npt.NDArray[np.float32]


class Doubler:
    """A backend that doubles its input and records the batch sizes it saw per model."""

    description = "doubler"

    def __init__(self) -> None:
        self.batches: list[tuple[str, int]] = []

    def spec(self, model: str) -> ModelSpec:
        return ModelSpec(model, 8, (TensorSpec("x", "float32", (1,)),), (TensorSpec("y", "float32", (1,)),))

    async def infer(self, model: str, inputs: dict[str, NDF]) -> dict[str, NDF]:
        self.batches.append((model, len(inputs["x"])))
        return {"y": inputs["x"] * 2}

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


def test_cpu_onnxruntime_does_not_batch() -> None:
    assert auto_max_batch_size(Settings(device="cpu")) == 1


def test_triton_batches() -> None:
    assert auto_max_batch_size(Settings(backend="triton")) == GPU_BATCH_SIZE


def test_auto_follows_cuda_availability() -> None:
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert auto_max_batch_size(Settings(device="auto")) == (GPU_BATCH_SIZE if has_cuda else 1)


@pytest.fixture
async def batched() -> AsyncIterator[tuple[BatchedRunner, Doubler, Metrics]]:
    backend, metrics = Doubler(), Metrics()
    runner = BatchedRunner(backend, Settings(device="cpu", max_batch_size=8, max_wait_ms=0), metrics, max_queue=64)
    await runner.start()
    yield runner, backend, metrics
    await runner.aclose()


async def test_rows_go_through_the_batcher_labelled_with_the_context(
        batched: tuple[BatchedRunner, Doubler, Metrics]) -> None:
    runner, backend, metrics = batched
    assert all(b.max_queue == 64 for b in runner.batchers.values()) and set(runner.batchers) == set(MODEL_NAMES)
    x = np.arange(3, dtype=np.float32).reshape(3, 1)
    out = await asyncio.wait_for(runner.infer("embedder", {"x": x}, RequestContext(source="grpc")), 10)
    np.testing.assert_array_equal(out["y"], x * 2)
    assert backend.batches == [("embedder", 3)]  # the request's rows left together, in order
    assert metrics.value("facerec_batch_items_total", model="embedder", source="grpc") == 3
    # One waiter for the stage's three rows (not a task per row); the batch size still counts rows.
    stats = runner.batchers["embedder"].stats
    assert (stats.waiters, stats.items, list(stats.last_batch_sizes)) == (1, 3, [3])


async def test_the_context_deadline_drops_the_rows_unrun(batched: tuple[BatchedRunner, Doubler, Metrics]) -> None:
    runner, backend, metrics = batched
    past = asyncio.get_running_loop().time() - 1
    with pytest.raises(errors.DeadlineExceeded):
        await asyncio.wait_for(runner.infer("detector", {"x": np.zeros((2, 1), np.float32)},
                                            RequestContext(source="http", deadline=past)), 10)
    assert backend.batches == []
    assert metrics.value("facerec_rows_dropped_total", model="detector", reason="deadline") >= 1


async def test_direct_runner_calls_the_backend_as_is() -> None:
    backend = Doubler()
    out = await DirectRunner(backend).infer("landmarker", {"x": np.ones((2, 1), np.float32)}, INTERNAL)
    np.testing.assert_array_equal(out["y"], np.full((2, 1), 2, np.float32))
    assert backend.batches == [("landmarker", 2)]


class ShapeRecorder:
    """A backend that answers each input row with its own mean and records the shape of every call."""

    description = "shape recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def spec(self, model: str) -> ModelSpec:
        return ModelSpec(model, 16, (TensorSpec("input", "float32", (3, -1, -1)),),
                         (TensorSpec("out", "float32", (1,)),))

    async def infer(self, model: str, inputs: dict[str, NDF]) -> dict[str, NDF]:
        x = inputs["input"]
        self.calls.append(x.shape)
        return {"out": x.reshape(len(x), -1).mean(axis=1, keepdims=True)}

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


async def test_a_batch_with_two_canvas_sizes_runs_one_backend_call_per_size() -> None:
    backend = ShapeRecorder()
    # Six rows fill the batch, so it forms as soon as the last item arrives (no timing involved); the wait is long
    # enough that it never closes the batch first.
    settings = Settings(device="cpu", max_batch_size=6, max_wait_ms=1000.0)
    runner = BatchedRunner(backend, settings, Metrics(), max_queue=16)
    await runner.start()
    try:
        # Items of one and two rows (a stage's batch of one or two photos), two canvas sizes interleaved.
        items = [np.stack([np.full((3, s, s), v, np.float32) for v in vs])
                 for s, vs in ((160, (1.0,)), (320, (2.0, 5.0)), (160, (3.0, 6.0)), (320, (4.0,)))]
        outs = await asyncio.gather(*(runner.infer("detector", {"input": x}, INTERNAL) for x in items))
    finally:
        await runner.aclose()
    assert [o["out"][:, 0].tolist() for o in outs] == [[1.0], [2.0, 5.0], [3.0, 6.0], [4.0]]
    assert sorted(backend.calls) == [(3, 3, 160, 160), (3, 3, 320, 320)]


async def test_stage_batches_of_concurrent_requests_leave_as_one_backend_call() -> None:
    backend = Doubler()
    # 2 + 2 rows fill the batch of 4, so it forms when the second request's rows arrive (no timing involved); the
    # wait is long enough that it never closes the batch first. This is cross-request batching on a GPU or Triton.
    runner = BatchedRunner(backend, Settings(device="cpu", max_batch_size=4, max_wait_ms=1000.0), Metrics(),
                           max_queue=16)
    await runner.start()
    try:
        xs = [np.array([[1], [2]], np.float32), np.array([[3], [4]], np.float32)]
        outs = await asyncio.wait_for(asyncio.gather(
            *(runner.infer("landmarker", {"x": x}, RequestContext(source=src)) for x, src in zip(
                xs, ("http", "grpc"), strict=True))), 10)
    finally:
        await runner.aclose()
    assert backend.batches == [("landmarker", 4)]
    for x, out in zip(xs, outs, strict=True):
        np.testing.assert_array_equal(out["y"], x * 2)  # each request gets its own rows back, in order


async def test_a_stage_batch_larger_than_the_batch_size_is_cut_into_backend_calls() -> None:
    backend = Doubler()
    runner = BatchedRunner(backend, Settings(device="cpu", max_batch_size=2, max_wait_ms=0), Metrics(), max_queue=16)
    await runner.start()
    try:
        x = np.arange(5, dtype=np.float32).reshape(5, 1)
        out = await asyncio.wait_for(runner.infer("detector", {"x": x}, INTERNAL), 10)
    finally:
        await runner.aclose()
    np.testing.assert_array_equal(out["y"], x * 2)
    # The item is never split across batches, but no backend call exceeds the batch size (Triton's limit; on CPU,
    # size 1 keeps every model call at one row).
    assert backend.batches == [("detector", 2), ("detector", 2), ("detector", 1)]
    assert list(runner.batchers["detector"].stats.last_batch_sizes) == [5]


class ShortAnswer(Doubler):
    """A backend that drops the last row of its answer."""

    async def infer(self, model: str, inputs: dict[str, NDF]) -> dict[str, NDF]:
        return {"y": (await super().infer(model, inputs))["y"][:-1]}


async def test_a_backend_answer_with_missing_rows_fails_the_batch() -> None:
    runner = BatchedRunner(ShortAnswer(), Settings(device="cpu", max_batch_size=4, max_wait_ms=0), Metrics(),
                           max_queue=16)
    await runner.start()
    try:
        with pytest.raises(errors.InferenceFailed):
            await asyncio.wait_for(runner.infer("embedder", {"x": np.ones((3, 1), np.float32)}, INTERNAL), 10)
    finally:
        await runner.aclose()


async def test_a_request_that_leaves_withdraws_its_stage_batch_unrun() -> None:
    backend = Doubler()
    gate = asyncio.Event()
    entered = asyncio.Event()
    infer = backend.infer

    async def held(model: str, inputs: dict[str, NDF]) -> dict[str, NDF]:
        entered.set()
        await gate.wait()
        return await infer(model, inputs)

    backend.infer = held  # type: ignore[method-assign]
    runner = BatchedRunner(backend, Settings(device="cpu", max_batch_size=4, max_wait_ms=0), Metrics(), max_queue=16)
    await runner.start()
    try:
        first = asyncio.create_task(runner.infer("embedder", {"x": np.ones((1, 1), np.float32)}, INTERNAL))
        await asyncio.wait_for(entered.wait(), 10)
        gone = asyncio.create_task(runner.infer("embedder", {"x": np.full((3, 1), 7, np.float32)}, INTERNAL))
        for _ in range(5):
            await asyncio.sleep(0)
        assert runner.batchers["embedder"].queue_depth == 3
        gone.cancel()
        gate.set()
        await asyncio.wait_for(first, 10)
        assert (await asyncio.gather(gone, return_exceptions=True))[0].__class__ is asyncio.CancelledError
    finally:
        await runner.aclose()
    assert backend.batches == [("embedder", 1)]  # the departed request's rows never reached the model
    assert runner.batchers["embedder"].stats.dropped_cancelled == 3  # its three rows
