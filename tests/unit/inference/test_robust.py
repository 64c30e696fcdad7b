"""Faces whatever the crop or the in-plane rotation, with the real models on the shared photos (EXIF stripped).

Rotation sweep 0..345 degrees in steps of 15, tight crops against a bare OpenCV YuNet loop on the same crops, and no
face found on the faceless photos at any size or angle. ``python -m bench.robust`` measures the same on lfw-dev.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from server.domain import FaceAnalysis
from server.inference.backend import MODEL_NAMES
from server.inference.batched import DirectRunner
from server.inference.context import INTERNAL, RequestContext
from server.inference.onnxrt import OnnxRuntimeBackend
from server.inference.pipeline import (
    DETECTOR_ROWS_PER_IMAGE,
    LANDMARKER_CHECK_ROWS_PER_IMAGE,
    FacePipeline,
    FaceResult,
    PipelineConfig,
    comparability_issue,
)
from tests.conftest import MODEL_REPOSITORY, analyze_images

RGB = npt.NDArray[np.uint8]
Results = dict[str, FaceResult | None]

ANGLES = list(range(0, 360, 15))
# (photo, reference it is compared with): two same-person pairs and one different-person pair.
SWEEP = [("obama_01", "obama_02"), ("biden_02", "biden_01"), ("eileen_collins_01", "obama_01")]
# The pipeline's similarity moves by up to ~0.02 when the same photo is merely shifted by one pixel (biden_02 padded
# by 1 px: +0.0175; obama_01 by 3 px: -0.008), because FaceMesh and the 5-point alignment land on slightly different
# sub-pixel positions. Quarter turns move no pixel values, only positions: they stay within that 0.02. Other angles
# also resample the photo bilinearly (a slight blur); measured on these photos they stay within 0.035.
SIMILARITY_TOL_QUARTER = 0.02
SIMILARITY_TOL_OTHER = 0.045
ROLL_TOL = 3.0


def turn(img: RGB, angle: int) -> RGB:
    """``img`` turned counter-clockwise by ``angle`` degrees, pixels only (no EXIF): exact for quarter turns."""
    if angle % 90 == 0:
        return np.ascontiguousarray(np.rot90(img, angle // 90))
    return np.ascontiguousarray(np.asarray(Image.fromarray(img).rotate(angle, expand=True,
                                                                       resample=Image.BILINEAR)))


def wrap(deg: float) -> float:
    return (deg + 180.0) % 360.0 - 180.0


def eye_centres(a: FaceAnalysis) -> npt.NDArray[np.float64]:
    p = np.array([(q.x, q.y) for q in a.landmark_68])
    return np.stack([p[36:42].mean(axis=0), p[42:48].mean(axis=0)])


def unturn_quarter(pts: npt.NDArray[np.float64], angle: int, turned_shape: tuple[int, ...]
                   ) -> npt.NDArray[np.float64]:
    """Points of an image turned counter-clockwise by a quarter-turn ``angle`` back to the upright image."""
    x, y = pts[:, 0], pts[:, 1]
    h, w = turned_shape[:2]
    k = (angle // 90) % 4
    if k == 0:
        return pts
    if k == 1:  # np.rot90 once maps (x, y) to (y, W - x); the upright width W is the turned height h
        return np.stack([h - y, x], axis=1)
    if k == 2:
        return np.stack([w - x, h - y], axis=1)
    return np.stack([y, w - x], axis=1)


@pytest.fixture(scope="module")
def sweep(pipeline: FacePipeline, photo: Callable[[str], RGB]) -> dict[int, list[FaceResult | None]]:
    """The three sweep photos at every angle, one pipeline batch per angle."""
    return {a: analyze_images(pipeline, [turn(photo(p), a) for p, _ in SWEEP]) for a in ANGLES}


@pytest.fixture(scope="module")
def references(pipeline: FacePipeline, photo: Callable[[str], RGB]) -> list[FaceResult]:
    out = analyze_images(pipeline, [photo(r) for _, r in SWEEP])
    assert all(r is not None for r in out)
    return out  # type: ignore[return-value]


@pytest.mark.parametrize("angle", ANGLES)
def test_rotated_photos_give_the_upright_verdict(pipeline: FacePipeline, sweep: dict[int, list[FaceResult | None]],
                                                 references: list[FaceResult], photo: Callable[[str], RGB],
                                                 angle: int) -> None:
    """Same verdict, similarity close to upright, the real roll, the quarter turn applied, original coordinates."""
    upright, turned = sweep[0], sweep[angle]
    for k, (name, ref) in enumerate(SWEEP):
        up, r = upright[k], turned[k]
        assert up is not None and r is not None, f"{name} turned {angle}: no face found"
        c_up, c = pipeline.compare(up, references[k]), pipeline.compare(r, references[k])
        assert c.result is c_up.result, f"{name} vs {ref} turned {angle}: {c.similarity:.3f} vs {c_up.similarity:.3f}"
        tol = SIMILARITY_TOL_QUARTER if angle % 90 == 0 else SIMILARITY_TOL_OTHER
        assert abs(c.similarity - c_up.similarity) <= tol, (
            f"{name} vs {ref} turned {angle}: similarity {c.similarity:.4f}, upright {c_up.similarity:.4f}")
        # Turning the picture counter-clockwise by the angle lowers roll by it (README), wrapped to -180..180.
        err = wrap(r.analysis.roll - up.analysis.roll + angle)
        assert abs(err) <= ROLL_TOL, f"{name} turned {angle}: roll {r.analysis.roll}, upright {up.analysis.roll}"
        assert -180.0 <= r.analysis.roll <= 180.0
        nearest = round(angle / 90) % 4 * 90
        if abs(angle - round(angle / 90) * 90) < 45:  # at exactly 45 off, either neighbour is right
            assert r.analysis.orientation_correction == nearest, f"{name} turned {angle}"
        else:
            assert r.analysis.orientation_correction in (nearest, (nearest - 90) % 360, (nearest + 90) % 360)
        if angle % 90 == 0:
            # Coordinates stay in the photo as sent: turned back, the eyes land where the upright analysis has them.
            back = unturn_quarter(eye_centres(r.analysis), angle, turn(photo(name), angle).shape)
            np.testing.assert_allclose(back, eye_centres(up.analysis), atol=3.0, err_msg=f"{name} turned {angle}")


def test_upright_photos_report_no_correction(sweep: dict[int, list[FaceResult | None]]) -> None:
    assert all(r is not None and r.analysis.orientation_correction == 0 for r in sweep[0])


# --------------------------------------------------------------------------------------------------- tight crops

CROPS = {"c0.8": (0.8, 0.8, 0.8, 0.8), "c1.0": (1.0, 1.0, 1.0, 1.0), "forehead": (1.0, 0.5, 1.0, 1.1),
         "chin": (1.0, 1.1, 1.0, 0.6)}  # half-widths / half-heights (left, top, right, bottom) in box units / 2
CROP_SIZES = (128, 512)
CROP_PHOTOS = ("obama_01", "obama_02", "biden_02", "eileen_collins_01")


def tight_crop(img: RGB, box: tuple[int, int, int, int], spec: tuple[float, float, float, float], size: int) -> RGB:
    x1, y1, x2, y2 = box
    cx, cy, s = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) / 2
    left, top, right, bottom = spec
    a = [round(cx - left * s), round(cy - top * s), round(cx + right * s), round(cy + bottom * s)]
    crop = img[max(0, a[1]) : a[3], max(0, a[0]) : a[2]]
    k = size / max(crop.shape[:2])
    return np.ascontiguousarray(cv2.resize(crop, (round(crop.shape[1] * k), round(crop.shape[0] * k)),
                                           interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC))


def opencv_finds_a_face(img: RGB) -> bool:
    """The bare loop's detector: cv2.FaceDetectorYN at the photo's own size, score 0.6 (bench.peers.OpenCVFace)."""
    det = cv2.FaceDetectorYN.create(str(MODEL_REPOSITORY / "detector" / "1" / "model.onnx"), "",
                                    (img.shape[1], img.shape[0]), 0.6, 0.3, 5000)
    _, faces = det.detect(np.ascontiguousarray(img[:, :, ::-1]))
    return faces is not None and len(faces) > 0


def test_tight_crops_are_found_at_least_as_often_as_by_opencv(pipeline: FacePipeline, photo: Callable[[str], RGB],
                                                              photo_results: Results) -> None:
    """Faces filling the frame (forehead or chin cut) at a small and a large photo size: no more refusals than
    the OpenCV loop on the same crops, and the face found is the person's (same verdict against the full photo)."""
    crops, refs = [], []
    for name in CROP_PHOTOS:
        full = photo_results[name]
        assert full is not None
        a = full.analysis
        for spec in CROPS.values():
            for size in CROP_SIZES:
                crops.append(tight_crop(photo(name), (a.x1, a.y1, a.x2, a.y2), spec, size))
                refs.append(full)
    results = analyze_images(pipeline, crops)
    ours = sum(r is None for r in results)
    theirs = sum(not opencv_finds_a_face(c) for c in crops)
    assert ours <= theirs, f"facerec refused {ours} of {len(crops)} crops, the OpenCV loop {theirs}"
    assert ours == 0
    for r, ref in zip(results, refs, strict=True):
        assert r is not None and pipeline.compare(r, ref).similarity >= pipeline.config.threshold


def test_no_face_photos_stay_faceless_at_any_size_or_angle(pipeline: FacePipeline, photo: Callable[[str], RGB]
                                                           ) -> None:
    """The fallback passes (padding, turns, diagonal turns) must not invent a face."""
    images = []
    for name in ("no_face_rocket", "no_face_coffee"):
        img = photo(name)
        images += [turn(img, a) for a in (0, 45, 90, 135, 180, 270)]
        for size in (96, 300, 1024):
            k = size / max(img.shape[:2])
            images.append(cv2.resize(img, (round(img.shape[1] * k), round(img.shape[0] * k))))
    assert analyze_images(pipeline, images) == [None] * len(images)


def test_a_face_under_the_limits_is_found_but_not_comparable(pipeline: FacePipeline, photo_results: Results) -> None:
    """The reason names the measured value and the limit; within the limits there is no reason."""
    r = photo_results["obama_04"]  # the shared photos' most turned head (yaw about 36 degrees)
    assert r is not None and comparability_issue(r.analysis, pipeline.config) is None
    strict = dataclasses.replace(pipeline.config, max_abs_yaw_deg=20.0)
    reason = comparability_issue(r.analysis, strict)
    assert reason is not None and "yaw" in reason and "20 degrees" in reason
    tiny = dataclasses.replace(pipeline.config, min_eye_dist_px=r.analysis.eye_dist + 1)
    reason = comparability_issue(r.analysis, tiny)
    assert reason is not None and "too small" in reason


def test_the_pipeline_marks_faces_it_cannot_compare(backend: OnnxRuntimeBackend, photo: Callable[[str], RGB]) -> None:
    strict = FacePipeline(DirectRunner(backend), {m: backend.spec(m) for m in MODEL_NAMES},
                          PipelineConfig(max_abs_yaw_deg=20.0))
    turned, frontal = analyze_images(strict, [photo("obama_04"), photo("obama_01")])
    assert turned is not None and turned.not_comparable is not None and "yaw" in turned.not_comparable
    assert frontal is not None and frontal.not_comparable is None


class _CountingRunner:
    """Runs on the real backend and counts the rows each model is sent."""

    def __init__(self, backend: OnnxRuntimeBackend) -> None:
        self.backend = backend
        self.rows: dict[str, int] = {}

    async def infer(self, model: str, inputs: dict[str, npt.NDArray[np.float32]],
                    ctx: RequestContext) -> dict[str, npt.NDArray[np.float32]]:
        self.rows[model] = self.rows.get(model, 0) + len(next(iter(inputs.values())))
        return await self.backend.infer(model, inputs)


@pytest.mark.parametrize(("name", "angle"), [("obama_01", 0), ("obama_01", 135), ("no_face_coffee", 0)])
def test_detection_rows_stay_within_the_declared_bound(backend: OnnxRuntimeBackend, photo: Callable[[str], RGB],
                                                       name: str, angle: int) -> None:
    """The batchers' queue bounds rely on DETECTOR_ROWS_PER_IMAGE and LANDMARKER_CHECK_ROWS_PER_IMAGE."""
    runner = _CountingRunner(backend)
    pipe = FacePipeline(runner, {m: backend.spec(m) for m in MODEL_NAMES}, PipelineConfig())
    asyncio.run(pipe.detect_faces([turn(photo(name), angle)], INTERNAL))
    assert runner.rows["detector"] <= DETECTOR_ROWS_PER_IMAGE
    assert runner.rows.get("landmarker", 0) <= LANDMARKER_CHECK_ROWS_PER_IMAGE
    if name.startswith("no_face"):
        assert runner.rows["detector"] == DETECTOR_ROWS_PER_IMAGE  # the worst case: every fallback pass ran
    elif angle == 0:
        assert runner.rows["detector"] == 3 and "landmarker" not in runner.rows  # first pass + upright check
