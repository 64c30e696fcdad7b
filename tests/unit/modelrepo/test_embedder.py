"""The built embedder (SFace): fp32 equals the original file; int8 is fused into int8 kernels and stays close."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from server.inference.backend import MODEL_NAMES
from server.inference.context import INTERNAL
from server.inference.onnxrt import OnnxRuntimeBackend
from server.inference.pipeline import FacePipeline, PipelineConfig
from server.inference.precision import MODEL_FILES
from server.modelrepo import embedder
from server.modelrepo.quantize import CalibrationTable
from server.modelrepo.sources import fetch_source

from .conftest import cosine, model_path, session

INT8 = MODEL_FILES["int8"]
# Measured with 7-bit weights on this project's photos (bench.precision: 11 faces of ../shared/faces, min 0.993,
# mean 0.9948) and on the 446 LFW dev faces (min 0.987, mean 0.9951); the bounds leave a margin under both. The
# kernels' integer sums are exact on AVX2 and VNNI alike, so these should hold on either.
MIN_COSINE = 0.98
MEAN_COSINE = 0.993


def test_embedder_matches_int8_original(repo: Path, cache_dir: Path) -> None:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    original = ort.InferenceSession(fetch_source(cache_dir, embedder.SOURCE), opts,
                                    providers=["CPUExecutionProvider"])
    # The original lists unused pre-quantisation weights as required inputs; any value will do.
    stale = {v.name: np.zeros(v.shape, np.float32) for v in original.get_inputs() if v.name != "data"}
    faces = np.random.default_rng(6).uniform(0, 255, (3, 3, 112, 112)).astype(np.float32)
    (ours,) = session(model_path(repo, "embedder")).run(None, {"data": faces})
    for i in range(3):
        (ref,) = original.run(None, {"data": faces[i : i + 1], **stale})
        assert cosine(ours[i], ref[0]) > 0.9999
        np.testing.assert_allclose(ours[i], ref[0], rtol=1e-3, atol=1e-3)


def test_calibration_table_covers_the_quantized_graph(cache_dir: Path) -> None:
    table = CalibrationTable.load(embedder.CALIBRATION)
    assert table.source_sha256 == embedder.SOURCE.sha256
    graph = embedder.int8_float_graph(fetch_source(cache_dir, embedder.SOURCE))
    assert set(embedder.int8_tensors(graph)) == set(table.ranges)


def test_int8_embedder_runs_on_int8_kernels(repo: Path, tmp_path: Path) -> None:
    # What onnxruntime makes of the file: every quantized Conv a QLinearConv (u8s8 kernels), the head a QGemm; only the
    # two convolutions kept in float on purpose remain Conv.
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "fused.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(model_path(repo, "embedder", INT8)), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "fused.onnx")).graph.node]
    assert (ops.count("QLinearConv"), ops.count("QGemm"), ops.count("Conv")) == (25, 1, len(embedder.INT8_FLOAT_NODES))
    meta = {p.key: p.value for p in onnx.load(str(model_path(repo, "embedder", INT8))).metadata_props}
    assert meta["facerec.precision"] == "int8" and meta["facerec.source_sha256"] == embedder.SOURCE.sha256


def test_int8_embedder_shapes_and_batch(repo: Path) -> None:
    sess = session(model_path(repo, "embedder", INT8))
    faces = embedder.smooth_faces(3, seed=9)
    (together,) = sess.run(None, {"data": faces})
    assert together.shape == (3, 128) and together.dtype == np.float32
    for i in range(3):
        (alone,) = sess.run(None, {"data": faces[i : i + 1]})
        np.testing.assert_allclose(together[i : i + 1], alone, rtol=1e-4, atol=1e-4)
    assert not np.allclose(together[0], together[1])


@pytest.fixture(scope="module")
def face_crops(faces_dir: Path, backend: OnnxRuntimeBackend,
               rgb_loader: Callable[[Path], np.ndarray[Any, Any]]) -> np.ndarray[Any, Any]:
    """The aligned 112x112 crops the pipeline feeds the embedder, for every shared photo with a face."""
    crops: list[np.ndarray[Any, Any]] = []

    class Capture:
        async def infer(self, model: str, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
            if model == "embedder":
                crops.append(next(iter(inputs.values())).copy())
            return await backend.infer(model, inputs)

    pipeline = FacePipeline(Capture(), {m: backend.spec(m) for m in MODEL_NAMES}, PipelineConfig())  # type: ignore[arg-type]
    images = [rgb_loader(p) for p in sorted(faces_dir.glob("*.jpg"))]
    asyncio.run(pipeline.analyze(images, INTERNAL))
    out = np.concatenate(crops)
    assert len(out) >= 8, "too few faces in the shared photos for a meaningful bound"
    return out


def test_int8_embeddings_are_close_to_fp32_on_real_faces(repo: Path, face_crops: np.ndarray[Any, Any]) -> None:
    (fp32,) = session(model_path(repo, "embedder")).run(None, {"data": face_crops})
    (int8,) = session(model_path(repo, "embedder", INT8)).run(None, {"data": face_crops})
    cos = np.array([cosine(a, b) for a, b in zip(fp32, int8, strict=True)])
    assert cos.min() >= MIN_COSINE, cos
    assert cos.mean() >= MEAN_COSINE, cos
    # And not trivially: different faces stay apart in int8 as in fp32.
    n = int8 / np.linalg.norm(int8, axis=1, keepdims=True)
    f = fp32 / np.linalg.norm(fp32, axis=1, keepdims=True)
    np.testing.assert_allclose(n @ n.T, f @ f.T, atol=0.05)
