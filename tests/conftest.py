"""Shared fixtures: the public-domain face photos, the real model repository, one onnxruntime pipeline.

The pipeline fixture is synchronous and session-scoped; tests call ``analyze_images`` (which wraps
``asyncio.run``) so no event loop outlives a test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageOps

from server.analysis.calibration import ScoreCalibration
from server.inference.backend import MODEL_NAMES
from server.inference.batched import DirectRunner
from server.inference.context import INTERNAL
from server.inference.onnxrt import OnnxRuntimeBackend
from server.inference.pipeline import FacePipeline, FaceResult, PipelineConfig
from tooling.triton_local import LocalTriton

ROOT = Path(__file__).resolve().parents[1]
FACES_DIR = ROOT.parent / "shared" / "faces"
MODEL_REPOSITORY = ROOT / "model_repository"

RGB = npt.NDArray[np.uint8]


def load_rgb(path: Path) -> RGB:
    """An image file as an upright ``(H, W, 3)`` uint8 RGB array (independent of the product's decoder)."""
    with Image.open(path) as img:
        return np.ascontiguousarray(np.asarray(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.uint8))


def analyze_images(pipeline: FacePipeline, images: list[RGB]) -> list[FaceResult | None]:
    """Run the async pipeline on a batch from synchronous test code."""
    return asyncio.run(pipeline.analyze(images, INTERNAL))


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    if not (FACES_DIR / "LABELS.csv").is_file():
        pytest.skip(f"shared face photos not found at {FACES_DIR} (the ../shared/faces folder is absent)")
    return FACES_DIR


@pytest.fixture(scope="session")
def photo(faces_dir: Path) -> Callable[[str], RGB]:
    """Load a shared photo by file-name prefix (``"obama_01"``) or full name, as RGB."""
    cache: dict[str, RGB] = {}

    def get(name: str) -> RGB:
        if name not in cache:
            matches = sorted(faces_dir.glob(f"{name}*.jpg"))
            assert matches, f"no photo {name}* in {faces_dir}"
            cache[name] = load_rgb(matches[0])
        return cache[name].copy()

    return get


@pytest.fixture(scope="session")
def backend() -> Iterator[OnnxRuntimeBackend]:
    missing = [m for m in MODEL_NAMES if not (MODEL_REPOSITORY / m / "1" / "model.onnx").is_file()]
    if missing:
        from server.modelrepo import build_model_repository
        from server.settings import Settings

        build_model_repository(MODEL_REPOSITORY, Settings().model_cache_dir)
    b = OnnxRuntimeBackend(MODEL_REPOSITORY, intra_threads=2)
    yield b
    asyncio.run(b.aclose())


@pytest.fixture(scope="session")
def pipeline(backend: OnnxRuntimeBackend) -> FacePipeline:
    return FacePipeline(DirectRunner(backend), {m: backend.spec(m) for m in MODEL_NAMES}, PipelineConfig(),
                        ScoreCalibration())


def short_name(path: Path) -> str:
    """``obama_01_portrait_2012.jpg`` -> ``obama_01``; ``two_faces_obama_biden.jpg`` -> ``two_faces_obama_biden``."""
    parts = path.stem.split("_")
    for i, part in enumerate(parts):
        if part.isdigit():
            return "_".join(parts[: i + 1])
    return path.stem


@pytest.fixture(scope="session")
def photo_results(faces_dir: Path, pipeline: FacePipeline) -> dict[str, FaceResult | None]:
    """Every shared photo analysed once, in one batch, keyed by short name (``obama_01``, ``no_face_coffee``)."""
    paths = sorted(faces_dir.glob("*.jpg"))
    results = analyze_images(pipeline, [load_rgb(p) for p in paths])
    return {short_name(p): r for p, r in zip(paths, results, strict=True)}


@pytest.fixture(scope="session")
def analyze(pipeline: FacePipeline) -> Callable[[list[RGB]], list[FaceResult | None]]:
    """``analyze(images)``: the session pipeline's ``analyze`` called synchronously."""
    return lambda images: analyze_images(pipeline, images)


@pytest.fixture(scope="session")
def rgb_loader() -> Callable[[Path], RGB]:
    """``rgb_loader(path)``: any image file as upright RGB uint8."""
    return load_rgb


@pytest.fixture(scope="session")
def mesh_of(pipeline: FacePipeline, backend: OnnxRuntimeBackend) -> Callable[[RGB], npt.NDArray[np.float32]]:
    """``mesh_of(image)``: the refined 468-point FaceMesh ``(468, 3)`` of the most prominent face, in image pixels.

    Built from the public pre/post-processing pieces, the same way the pipeline chains them.
    """
    from server.inference.models.detector import most_prominent
    from server.inference.models.landmarker import Landmarker

    def run(image: RGB, affines: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
        lm = pipeline.landmarker
        batch = lm.preprocess([image], np.zeros(1, np.intp), affines)
        mesh, _ = lm.postprocess(backend.infer_sync(lm.name, {lm.input_name: batch}), affines)
        return mesh

    def get(image: RGB) -> npt.NDArray[np.float32]:
        dets = asyncio.run(pipeline.detect([image], INTERNAL))[0]
        assert dets, "no face found"
        d = dets[most_prominent(dets, image.shape[:2])]
        mesh = run(image, Landmarker.rois(d.box[None], d.kps[None, :2]))
        for _ in range(pipeline.config.refine_passes):
            mesh = run(image, Landmarker.rois_from_mesh(mesh))
        return mesh[0]

    return get


@pytest.fixture(scope="session")
def local_triton() -> Iterator[LocalTriton]:
    """A real tritonserver (bundled in nvidia-pytriton) serving the model repository on CPU, once per session."""
    from tooling.triton_local import TritonUnavailableError

    missing = [m for m in MODEL_NAMES if not (MODEL_REPOSITORY / m / "1" / "model.onnx").is_file()]
    if missing:
        pytest.skip(f"model repository incomplete ({', '.join(missing)}): run `make models`")
    try:
        triton = LocalTriton(MODEL_REPOSITORY).start()
    except TritonUnavailableError as exc:
        pytest.skip(f"local tritonserver unavailable: {exc}")
    yield triton
    triton.stop()
