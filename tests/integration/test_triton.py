"""The Triton backend against a real tritonserver (pytriton's bundled binary, Python backend, CPU)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from harness import WAIT_S
from PIL import Image

from server.domain import CompareResult
from server.errors import Unavailable
from server.inference.backend import MODEL_NAMES
from server.inference.batched import DirectRunner
from server.inference.context import INTERNAL
from server.inference.model_config import load_spec
from server.inference.onnxrt import OnnxRuntimeBackend
from server.inference.pipeline import FacePipeline, PipelineConfig
from server.inference.triton import TritonBackend
from server.settings import PROJECT_ROOT
from tooling.serve import free_port
from tooling.triton_local import LocalTriton, TritonUnavailableError
from tooling.wait import wait_until

pytestmark = pytest.mark.triton

REPO = PROJECT_ROOT / "model_repository"
FACES = Path("/work/shared/faces")
PAIR = ("obama_01_portrait_2012.jpg", "biden_01_blueroom_2010.jpg")
# Random inputs at the scale each model expects (detector BGR 0..255 at 320x320, mesh 0..1, SFace 0..255).
SHAPES = {
    "detector": ((3, 320, 320), 255.0),
    "landmarker": ((3, 192, 192), 1.0),
    "embedder": ((3, 112, 112), 255.0),
}


def _require_models() -> None:
    missing = [m for m in MODEL_NAMES if not (REPO / m / "1" / "model.onnx").is_file()]
    if missing:
        pytest.skip(f"model repository incomplete ({', '.join(missing)}): run `make models`")


def _start(models: tuple[str, ...] = MODEL_NAMES) -> LocalTriton:
    _require_models()
    try:
        return LocalTriton(REPO, models=models).start()
    except TritonUnavailableError as exc:
        pytest.skip(f"local tritonserver unavailable: {exc}")


@pytest.fixture(scope="module")
def triton() -> Iterator[LocalTriton]:
    server = _start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ort_backend() -> Iterator[OnnxRuntimeBackend]:
    _require_models()
    # Triton serves the fp32 files; compare against the same precision in-process.
    backend = OnnxRuntimeBackend(REPO, device="cpu", precision="fp32")
    yield backend
    asyncio.run(backend.aclose())


@pytest.fixture
async def backend(triton: LocalTriton) -> AsyncIterator[TritonBackend]:
    b = await TritonBackend.connect(triton.grpc_url, timeout_s=30.0)
    yield b
    await b.aclose()


async def test_ready_and_description(backend: TritonBackend) -> None:
    assert await backend.ready()
    assert backend.description.startswith("triton ")


def test_spec_matches_local_config(backend: TritonBackend) -> None:
    for model in MODEL_NAMES:
        assert backend.spec(model) == load_spec(REPO, model)


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("model", MODEL_NAMES)
async def test_outputs_equal_onnxruntime(backend: TritonBackend, ort_backend: OnnxRuntimeBackend,
                                         model: str, batch: int) -> None:
    shape, scale = SHAPES[model]
    rng = np.random.default_rng(batch)
    x = (rng.random((batch, *shape), dtype=np.float32) * scale).astype(np.float32)
    name = backend.spec(model).inputs[0].name
    got = await backend.infer(model, {name: x})
    want = ort_backend.infer_sync(model, {name: x})
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].shape == value.shape and got[key].dtype == np.float32
        np.testing.assert_allclose(got[key], value, atol=1e-4, rtol=1e-5, err_msg=f"{model}.{key}")


def _load(name: str) -> np.ndarray:
    if not (FACES / name).is_file():
        pytest.skip(f"{FACES / name} absent")
    with Image.open(FACES / name) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


async def test_pipeline_matches_onnxruntime(backend: TritonBackend, ort_backend: OnnxRuntimeBackend) -> None:
    images = [_load(n) for n in PAIR]
    via_triton = FacePipeline(DirectRunner(backend), {m: backend.spec(m) for m in MODEL_NAMES}, PipelineConfig())
    in_process = FacePipeline(DirectRunner(ort_backend), {m: ort_backend.spec(m) for m in MODEL_NAMES},
                              PipelineConfig())
    got = await via_triton.analyze(images, INTERNAL)
    want = await in_process.analyze(images, INTERNAL)
    for g, w in zip(got, want, strict=True):
        assert g is not None and w is not None
        assert float(np.dot(g.embedding, w.embedding)) > 0.9999
        assert (g.analysis.x1, g.analysis.y1, g.analysis.x2, g.analysis.y2) == (
            w.analysis.x1, w.analysis.y1, w.analysis.x2, w.analysis.y2)
    assert got[0] is not None and got[1] is not None and want[0] is not None and want[1] is not None
    assert via_triton.compare(got[0], got[1]).result == in_process.compare(want[0], want[1]).result


async def _embedder_counts(backend: TritonBackend) -> tuple[int, int]:
    stats = await backend.client.get_inference_statistics("embedder", as_json=True)
    entry = stats["model_stats"][0]
    # JSON renders uint64 counters as strings, and leaves them out while zero.
    return int(entry.get("inference_count", 0)), int(entry.get("execution_count", 0))


async def test_concurrent_requests_are_batched_by_triton(backend: TritonBackend) -> None:
    inferences0, executions0 = await _embedder_counts(backend)
    rng = np.random.default_rng(7)
    batches = [(rng.random((1, 3, 112, 112), dtype=np.float32) * 255).astype(np.float32) for _ in range(16)]
    outs = await asyncio.gather(*(backend.infer("embedder", {"data": x}) for x in batches))
    assert all(o["fc1"].shape == (1, 128) for o in outs)

    # Triton counts a request in its statistics after sending the response, so the client can hold every answer
    # before the counters move (seen once: 16 answers, counters unchanged): wait for them, then check exactly.
    async def counted() -> bool:
        return (await _embedder_counts(backend))[0] - inferences0 >= 16

    await wait_until(counted, within_s=WAIT_S, what="Triton's statistics count the 16 inferences")
    inferences1, executions1 = await _embedder_counts(backend)
    assert inferences1 - inferences0 == 16
    assert executions1 - executions0 < 16


async def test_killed_server_is_unavailable() -> None:
    server = _start(models=("detector",))
    try:
        backend = await TritonBackend.connect(server.grpc_url, models=("detector",), timeout_s=5.0)
        try:
            assert await backend.ready()
            server.kill()
            assert not await backend.ready()
            x = np.zeros((1, 3, 64, 64), dtype=np.float32)
            with pytest.raises(Unavailable) as info:
                await backend.infer("detector", {"input": x})
            assert info.value.detail in {"inference server unavailable", "inference deadline exceeded"}
        finally:
            await backend.aclose()
    finally:
        server.stop()


async def test_connect_to_nothing_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        await TritonBackend.connect(f"127.0.0.1:{free_port()}", timeout_s=2.0)


async def test_runtime_selects_triton_from_env(triton: LocalTriton, tmp_path: Path) -> None:
    from server.runtime import Runtime
    from server.settings import Settings

    settings = Settings.from_env({"FACEREC_BACKEND": "triton", "FACEREC_TRITON_URL": triton.grpc_url,
                                  "FACEREC_DATA_DIR": str(tmp_path), "FACEREC_MAX_WAIT_MS": "0"})
    runtime = await Runtime.start(settings)
    try:
        assert isinstance(runtime.backend, TritonBackend)
        assert (await runtime.readiness())["models"]
        a, b = await runtime.pipeline.analyze([_load(PAIR[0]), _load(PAIR[1])], INTERNAL)
        assert a is not None and b is not None
        assert runtime.pipeline.compare(a, b).result is CompareResult.DIFFERENT
        assert runtime.pipeline.compare(a, a).result is CompareResult.SAME
    finally:
        await runtime.aclose()
