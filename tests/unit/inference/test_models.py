"""Pre/post-processing of the three models on synthetic tensors, and the 468 -> 68 mapping on a real mesh."""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from server.inference.models.detector import STRIDES, Detector
from server.inference.models.embedder import ARCFACE_TEMPLATE, SIZE, Embedder, similarity_transform
from server.inference.models.landmarker import CROP, FIRST_ROI_DOWN, FIRST_ROI_SIZE, Landmarker, Rois, roi_affines
from server.inference.models.mesh68 import MESH_TO_68, mesh_to_68
from server.inference.pipeline import FacePipeline

RGB = npt.NDArray[np.uint8]

# --- detector --------------------------------------------------------------------------------------------------


def _empty_outputs(n: int, size: int = 640) -> dict[str, npt.NDArray[np.float32]]:
    out = {}
    for s in STRIDES:
        a = (size // s) ** 2
        out[f"cls_{s}"] = np.zeros((n, a, 1), np.float32)
        out[f"obj_{s}"] = np.zeros((n, a, 1), np.float32)
        out[f"bbox_{s}"] = np.zeros((n, a, 4), np.float32)
        out[f"kps_{s}"] = np.zeros((n, a, 10), np.float32)
    return out


def _put(out: dict[str, npt.NDArray[np.float32]], image: int, stride: int, row: int, col: int, *, cls: float,
         obj: float, bbox: tuple[float, float, float, float], kps: npt.NDArray[np.float32]) -> None:
    anchor = row * (640 // stride) + col  # row-major
    out[f"cls_{stride}"][image, anchor, 0] = cls
    out[f"obj_{stride}"][image, anchor, 0] = obj
    out[f"bbox_{stride}"][image, anchor] = bbox
    out[f"kps_{stride}"][image, anchor] = kps.ravel()


def test_detector_decodes_one_anchor() -> None:
    det = Detector(640, score_threshold=0.6)
    out = _empty_outputs(2)
    kps = np.array([[-1, -1], [1, -1], [0, 0], [-0.8, 1], [0.8, 1]], np.float32)
    row, col, s = 10, 20, 16
    _put(out, 0, s, row, col, cls=0.81, obj=1.0, bbox=(0.25, -0.5, math.log(4), math.log(5)), kps=kps)
    scales = np.array([0.5, 0.5], np.float32)
    dets = det.postprocess(out, scales, [(2000, 2000), (2000, 2000)])
    assert len(dets) == 2 and dets[1] == []
    (d,) = dets[0]
    cx, cy = (col + 0.25) * s, (row - 0.5) * s  # letterbox pixels
    w, h = 4 * s, 5 * s
    expected = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]) / 0.5
    np.testing.assert_allclose(d.box, expected, atol=1e-3)
    np.testing.assert_allclose(d.kps, (kps + np.array([col, row], np.float32)) * s / 0.5, atol=1e-3)
    assert d.score == pytest.approx(0.9, abs=1e-6)  # sqrt(cls * obj)
    assert d.width == pytest.approx(w / 0.5) and d.height == pytest.approx(h / 0.5)


def test_detector_threshold_nms_clipping_and_min_size() -> None:
    det = Detector(640, score_threshold=0.6, min_face_px=24)
    out = _empty_outputs(1)
    kps = np.zeros((5, 2), np.float32)
    big = (0.0, 0.0, math.log(4), math.log(4))
    _put(out, 0, 16, 10, 10, cls=0.9, obj=0.9, bbox=big, kps=kps)
    _put(out, 0, 16, 10, 11, cls=0.8, obj=0.8, bbox=big, kps=kps)  # overlaps the first heavily: suppressed
    _put(out, 0, 32, 2, 15, cls=0.7, obj=0.7, bbox=big, kps=kps)  # separate face
    _put(out, 0, 8, 70, 70, cls=0.5, obj=0.5, bbox=big, kps=kps)  # under the threshold
    _put(out, 0, 8, 40, 10, cls=0.95, obj=0.95, bbox=(0, 0, 0, 0), kps=kps)  # 8 px box: below min_face_px
    _put(out, 0, 32, 0, 0, cls=0.9, obj=0.9, bbox=(0, 0, math.log(3), math.log(3)), kps=kps)  # off the edge
    dets = det.postprocess(out, np.array([1.0], np.float32), [(640, 640)])[0]
    scores = [round(d.score, 3) for d in dets]
    assert scores == sorted(scores, reverse=True)
    assert scores == [0.9, 0.9, 0.7]
    for d in dets:
        assert (d.box >= 0).all() and (d.box <= 640).all()


def test_detector_preprocess_letterboxes_bgr() -> None:
    det = Detector(320)
    img = np.zeros((100, 200, 3), np.uint8)
    img[..., 0] = 255  # red
    tall = np.full((400, 100, 3), 50, np.uint8)
    batch, scales = det.preprocess([img, tall])
    assert batch.shape == (2, 3, 320, 320) and batch.dtype == np.float32
    np.testing.assert_allclose(scales, [1.6, 0.8])
    # BGR 0..255, image in the top-left corner, zeros elsewhere.
    assert batch[0, 2, :160, :].min() == 255 and batch[0, 0, :160, :].max() == 0
    assert batch[0, :, 160:, :].max() == 0
    assert batch[1, :, :, :80].min() == 50 and batch[1, :, :, 80:].max() == 0


def test_detector_size_must_be_a_multiple_of_32() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        Detector(600)


# --- landmarker ------------------------------------------------------------------------------------------------


def test_roi_levels_the_eyes_and_centres_the_box() -> None:
    boxes = np.array([[100, 100, 300, 340]], np.float32)
    angle = math.radians(25)
    centre = np.array([200, 220])
    eyes = np.stack([centre + 50 * np.array([-math.cos(angle), -math.sin(angle)]),
                     centre + 50 * np.array([math.cos(angle), math.sin(angle)])])[None].astype(np.float32)
    (a,) = Landmarker.rois(boxes, eyes)
    mapped = (a[:, :2] @ eyes[0].T + a[:, 2:]).T
    assert mapped[0, 1] == pytest.approx(mapped[1, 1], abs=1e-6)  # level
    assert mapped[0, 0] < mapped[1, 0]  # image-left eye stays on the left
    c = a[:, :2] @ np.array([200, 220]) + a[:, 2]
    np.testing.assert_allclose(c, [CROP / 2, CROP / 2], atol=1e-6)
    # ROI side = 1.5 x the longer box side, so the crop scale is 192 / 360.
    assert math.hypot(a[0, 0], a[0, 1]) == pytest.approx(CROP / (1.5 * 240))


@pytest.mark.parametrize("deg", [-40, 0, 17, 90])
def test_landmarker_postprocess_inverts_the_roi(pipeline: FacePipeline, deg: float) -> None:
    """Points put through the ROI affine and back come out where they started (x, y; z scaled to pixels)."""
    rng = np.random.default_rng(1)
    pts = np.concatenate([rng.uniform(200, 400, (468, 2)), rng.uniform(-30, 30, (468, 1))], axis=1)
    affines = roi_affines(np.array([[310.0, 290.0]], np.float32), np.array([250.0], np.float32),
                          np.array([math.radians(deg)], np.float32))
    a = affines[0]
    crop_xy = pts[:, :2] @ a[:, :2].T + a[:, 2]
    k = math.hypot(a[0, 0], a[0, 1])
    raw = np.concatenate([crop_xy, pts[:, 2:] * k], axis=1).astype(np.float32)
    lm = pipeline.landmarker
    mesh, presence = lm.postprocess({lm.mesh_name: raw.reshape(1, 1, 1, 1404),
                                     lm.presence_name: np.array([[[[3.0]]]], np.float32)}, affines)
    np.testing.assert_allclose(mesh[0], pts, atol=2e-3)
    assert presence[0] == pytest.approx(1 / (1 + math.exp(-3)), abs=1e-6)


def test_rois_from_mesh_recentre_on_the_mesh(mesh_of: Callable[[RGB], npt.NDArray[np.float32]],
                                             photo: Callable[[str], RGB]) -> None:
    mesh = mesh_of(photo("obama_01"))
    (a,) = Landmarker.rois_from_mesh(mesh[None])
    crop = mesh[:, :2] @ a[:, :2].T + a[:, 2]
    # The mesh fills about 1/1.5 of the crop, centred, eyes level.
    span = crop.max(axis=0) - crop.min(axis=0)
    assert span.max() == pytest.approx(CROP / 1.5, rel=0.02)
    np.testing.assert_allclose((crop.max(axis=0) + crop.min(axis=0)) / 2, [CROP / 2, CROP / 2], atol=1.0)
    assert crop[33, 1] == pytest.approx(crop[263, 1], abs=1e-3)


def test_rois_converge_only_when_turn_shift_and_size_are_all_small() -> None:
    """A ROI has converged when the next one turns < 1 degree and moves / resizes by < 3 % of its side."""
    base = Rois(np.array([[100.0, 100.0]] * 5, np.float32), np.full(5, 200.0, np.float32), np.zeros(5, np.float32))
    nxt = Rois(np.array([[101.0, 102.0], [107.0, 100.0], [100.0, 100.0], [100.0, 100.0], [100.0, 100.0]],
                        np.float32),
               np.array([205.0, 200.0, 207.0, 200.0, 200.0], np.float32),
               np.radians(np.array([0.5, 0.0, 0.0, 1.5, 359.5], np.float32)))
    # 1: all small; 2: moved 3.5 %; 3: resized 3.5 %; 4: turned 1.5 degrees; 5: turned -0.5 degrees (wraps).
    assert base.converged(nxt, roll_deg=1.0, shift=0.03).tolist() == [True, False, False, False, True]


def test_roi_params_match_the_affines(mesh_of: Callable[[RGB], npt.NDArray[np.float32]],
                                      photo: Callable[[str], RGB]) -> None:
    mesh = mesh_of(photo("obama_01"))[None]
    np.testing.assert_array_equal(Landmarker.roi_params_from_mesh(mesh).affines(), Landmarker.rois_from_mesh(mesh))
    boxes, eyes = np.array([[10, 20, 110, 140]], np.float32), np.array([[[40, 60], [80, 58]]], np.float32)
    np.testing.assert_array_equal(Landmarker.roi_params(boxes, eyes).affines(), Landmarker.rois(boxes, eyes))


def test_first_rois_start_smaller_and_lower_along_the_face() -> None:
    """The first pass's ROI is the box ROI shrunk by FIRST_ROI_SIZE and moved FIRST_ROI_DOWN x its side towards the
    chin: straight down for an upright face, up for an upside-down one, sideways for one lying on its side."""
    boxes = np.array([[0, 0, 100, 100]] * 3, np.float32)
    eyes = np.array([[[30, 40], [70, 40]],  # upright: eyes left to right
                     [[70, 60], [30, 60]],  # upside down
                     [[60, 30], [60, 70]]], np.float32)  # turned a quarter clockwise: chin to the image-left
    box, first = Landmarker.roi_params(boxes, eyes), Landmarker.first_rois(boxes, eyes)
    np.testing.assert_allclose(first.sizes, box.sizes * FIRST_ROI_SIZE, rtol=1e-6)
    np.testing.assert_array_equal(first.angles, box.angles)
    step = FIRST_ROI_DOWN * float(box.sizes[0])
    np.testing.assert_allclose(first.centres - box.centres, [[0, step], [0, -step], [-step, 0]], atol=1e-4)


# --- embedder --------------------------------------------------------------------------------------------------


def test_similarity_transform_recovers_a_known_transform() -> None:
    ident = similarity_transform(ARCFACE_TEMPLATE)
    np.testing.assert_allclose(ident, [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    ang, scale, t = math.radians(20), 2.5, np.array([300.0, 120.0])
    r = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    src = (ARCFACE_TEMPLATE.astype(np.float64) @ r.T) * scale + t  # template placed in a big image
    m = similarity_transform(src.astype(np.float32))
    back = src @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(back, ARCFACE_TEMPLATE, atol=1e-3)


def test_embedder_align_and_preprocess_layout() -> None:
    img = np.zeros((400, 400, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 30
    pts = (ARCFACE_TEMPLATE * 2 + 100).astype(np.float32)[None]
    crops = Embedder.align([img], np.zeros(1, np.intp), pts)
    assert crops.shape == (1, SIZE, SIZE, 3) and crops.dtype == np.uint8
    assert (crops[0, 20:90, 20:90] == [10, 20, 30]).all()
    x = Embedder.preprocess(crops)
    assert x.shape == (1, 3, SIZE, SIZE) and x.dtype == np.float32
    assert x[0, 0].mean() == pytest.approx(10, abs=0.5) and x[0, 2].mean() == pytest.approx(30, abs=1)  # RGB
    flipped = Embedder.preprocess(crops, flip=True)
    assert flipped.shape == (2, 3, SIZE, SIZE)
    np.testing.assert_array_equal(flipped[1], flipped[0][..., ::-1])


def test_embedder_postprocess_normalises(pipeline: FacePipeline) -> None:
    e = pipeline.embedder
    raw = np.random.default_rng(2).normal(size=(3, 128)).astype(np.float32) * 7
    out = e.postprocess({e.output_name: raw})
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out[0], raw[0] / np.linalg.norm(raw[0]), atol=1e-6)
    both = e.postprocess({e.output_name: np.concatenate([raw, raw])}, flip=True)
    np.testing.assert_allclose(both, out, atol=1e-6)


# --- 468 -> 68 -------------------------------------------------------------------------------------------------


def test_mesh68_mapping_structure() -> None:
    assert MESH_TO_68.shape == (68, 468)
    assert (MESH_TO_68 >= 0).all()
    np.testing.assert_allclose(MESH_TO_68.sum(axis=1), 1.0, atol=1e-6)
    assert ((MESH_TO_68 > 0).sum(axis=1) <= 2).all()  # each point is one vertex or a blend of two
    translated = mesh_to_68(np.ones((2, 468, 3), np.float32) * 5)
    np.testing.assert_allclose(translated, 5.0, atol=1e-5)  # weights sum to 1: translation-equivariant


def test_mesh68_geometric_order_on_a_real_mesh(mesh_of: Callable[[RGB], npt.NDArray[np.float32]],
                                               photo: Callable[[str], RGB]) -> None:
    """On a frontal, upright face every iBUG contour runs the way the 68-point scheme defines it."""
    p = mesh_to_68(mesh_of(photo("biden_02"))[None])[0, :, :2]
    x, y = p[:, 0], p[:, 1]
    assert (np.diff(x[0:17]) > 0).all()  # jaw: image-left temple -> chin -> image-right temple
    assert (np.diff(y[0:9]) > 0).all() and (np.diff(y[8:17]) < 0).all()
    assert (np.diff(x[17:22]) > 0).all() and (np.diff(x[22:27]) > 0).all()  # brows, left to right
    assert x[21] < x[27] < x[22]  # inner brow ends either side of the nose bridge
    assert (np.diff(y[27:31]) > 0).all()  # bridge top -> tip
    assert (np.diff(x[31:36]) > 0).all() and (y[31:36] > y[29]).all()  # nostril base below the bridge
    assert x[36] < x[39] < x[42] < x[45]  # eye corners
    assert y[37] < y[41] and y[38] < y[40] and y[43] < y[47] and y[44] < y[46]  # upper lids above lower
    assert (np.diff(x[48:55]) > 0).all() and (np.diff(x[54:60]) < 0).all()  # outer lip: top L->R, bottom R->L
    assert (np.diff(x[60:65]) > 0).all() and (np.diff(x[64:68]) < 0).all()  # inner lip likewise
    assert y[51] < y[62] and y[66] < y[57]  # outer lips enclose the inner ones
    assert x[48] < x[60] and x[64] < x[54]  # inner corners inside the outer ones
    assert y[19] < y[37] and y[24] < y[44] and y[33] < y[51] and y[57] < y[8]  # brow < eye, nose < mouth < chin


def test_warps_read_rgba_working_copies_exactly_like_rgb(pipeline: FacePipeline, photo: Callable[[str], RGB]) -> None:
    """The pipeline warps 4-channel copies of small images (faster in OpenCV): the same batches, bit for bit."""
    img = photo("eileen_collins_01")
    rgba = np.asarray(cv2.cvtColor(img, cv2.COLOR_RGB2RGBA))
    index = np.array([0, 0], np.intp)
    affines = roi_affines(np.array([[250.0, 180.0], [240.5, 190.25]], np.float32), np.array([210.0, 180.0], np.float32),
                          np.radians(np.array([7.0, -23.0], np.float32)))
    np.testing.assert_array_equal(pipeline.landmarker.preprocess([rgba], index, affines),
                                  pipeline.landmarker.preprocess([img], index, affines))
    pts = np.array([[[200, 160], [290, 158], [245, 210], [210, 250], [285, 248]]] * 2, np.float32)
    pts[1] += 3.3
    a, b = Embedder.align([rgba], index, pts), Embedder.align([img], index, pts)
    assert a.shape == b.shape == (2, 112, 112, 3) and a.flags.c_contiguous
    np.testing.assert_array_equal(a, b)
