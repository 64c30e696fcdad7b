"""Physical checks of the per-face attributes on real photos, plus unit checks of the formulas on a real mesh.

Sign conventions under test (server/analysis/attributes.py): x right, y down; ``roll`` > 0 when the head tilts
clockwise as displayed; ``yaw`` > 0 when the face turns towards the image's right; ``pitch`` > 0 looking up;
``left_eye_closed`` is the subject's left eye (the image-right eye in a non-mirrored photo).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from server.analysis.attributes import (
    _INNER_LIPS,
    _LEFT_LIDS,
    _RIGHT_LIDS,
    eye_closure,
    face_quality,
    head_pose,
    mouth_opening,
    quality_components,
)
from server.domain import FaceAnalysis
from server.inference.pipeline import FaceResult

RGB = npt.NDArray[np.uint8]
Analyze = Callable[[list[RGB]], list[FaceResult | None]]

# Upright, roughly frontal photos used for the physical checks.
PHYSICAL = ("obama_01", "obama_02", "biden_02", "eileen_collins_01")
UPRIGHT = (*PHYSICAL, "obama_03", "biden_01")
ANGLES = (15, -15, 30, -30)

ROLL_TOL = 3.0  # degrees (the tolerance); measured worst case 1.5 (0.35 on the flip)
YAW_FLIP_TOL = 3.0  # degrees; measured worst case 1.3
POSE_ROT_TOL = 5.0  # degrees of yaw/pitch drift under picture rotation; measured worst case 4.0 (obama_02)
# Eye-closure units; measured worst case 0.094 (biden_02: 0.094 vs 0.0, both eyes open): 0.12 leaves a margin.
EYE_SWAP_TOL = 0.12


def _points(a: FaceAnalysis) -> npt.NDArray[np.float64]:
    return np.array([(p.x, p.y) for p in a.landmark_68], dtype=np.float64)


def _rotate(img: RGB, a: FaceAnalysis, degrees: float) -> RGB:
    """Pad by a third of the long side (mid-grey), then rotate about the face centre; the face is never cropped.

    OpenCV's positive angle turns the picture counter-clockwise as displayed.
    """
    m = int(0.35 * max(img.shape[:2]))
    pad = cv2.copyMakeBorder(img, m, m, m, m, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    centre = ((a.x1 + a.x2) / 2 + m, (a.y1 + a.y2) / 2 + m)
    rot = cv2.getRotationMatrix2D(centre, degrees, 1.0)
    return cv2.warpAffine(pad, rot, (pad.shape[1], pad.shape[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(128, 128, 128))


def _cover_lower_face(img: RGB, a: FaceAnalysis, value: int) -> RGB:
    """Fill a rectangle across the box from the nose tip down to 10 % of the box height below the chin."""
    pts = _points(a)
    out = img.copy()
    y0 = round(pts[30, 1])
    y1 = min(img.shape[0], round(max(a.y2, pts[8, 1]) + 0.1 * (a.y2 - a.y1)))
    out[y0:y1, max(a.x1, 0):a.x2] = value
    return out


def _blur_face(img: RGB, a: FaceAnalysis, sigma: float = 6.0) -> RGB:
    """Gaussian blur (sigma 6 px) over the face box grown by half its size on each side."""
    w, h = a.x2 - a.x1, a.y2 - a.y1
    x0, y0 = max(0, a.x1 - w // 2), max(0, a.y1 - h // 2)
    x1, y1 = min(img.shape[1], a.x2 + w // 2), min(img.shape[0], a.y2 + h // 2)
    out = img.copy()
    out[y0:y1, x0:x1] = cv2.GaussianBlur(np.ascontiguousarray(img[y0:y1, x0:x1]), (0, 0), sigma)
    return out


VARIANTS = ("base", "pad", *(f"rot{a}" for a in ANGLES), "flip", "half", "cover_black", "cover_grey", "blur")


@pytest.fixture(scope="module")
def variants(photo: Callable[[str], RGB], photo_results: dict[str, FaceResult | None],
             analyze: Analyze) -> dict[str, dict[str, FaceAnalysis]]:
    """Every variant of every PHYSICAL photo, analysed in one batch: ``variants[photo][variant]``."""
    images: list[RGB] = []
    keys: list[tuple[str, str]] = []
    for name in PHYSICAL:
        base = photo_results[name]
        assert base is not None, name
        a, img = base.analysis, photo(name)
        made = {
            "base": img,
            "pad": _rotate(img, a, 0.0),
            **{f"rot{ang}": _rotate(img, a, ang) for ang in ANGLES},
            "flip": np.ascontiguousarray(img[:, ::-1]),
            "half": (img.astype(np.float32) * 0.5).round().astype(np.uint8),
            "cover_black": _cover_lower_face(img, a, 0),
            "cover_grey": _cover_lower_face(img, a, 128),
            "blur": _blur_face(img, a),
        }
        assert tuple(made) == VARIANTS
        for key, im in made.items():
            images.append(im)
            keys.append((name, key))
    out: dict[str, dict[str, FaceAnalysis]] = {n: {} for n in PHYSICAL}
    for (name, key), r in zip(keys, analyze(images), strict=True):
        assert r is not None, f"no face in {key} variant of {name}"
        out[name][key] = r.analysis
    return out


@pytest.mark.parametrize("angle", ANGLES)
@pytest.mark.parametrize("name", PHYSICAL)
def test_rotation_moves_roll_by_the_angle(variants: dict[str, dict[str, FaceAnalysis]], name: str,
                                         angle: int) -> None:
    ref = variants[name]["pad"]  # same canvas, not rotated
    rotated = variants[name][f"rot{angle}"]
    # A counter-clockwise picture rotation (OpenCV's positive angle) lifts the image-right eye: roll decreases.
    expected = ref.roll - angle
    assert rotated.roll == pytest.approx(expected, abs=ROLL_TOL), (name, angle, ref.roll, rotated.roll)


@pytest.mark.parametrize("angle", ANGLES)
@pytest.mark.parametrize("name", PHYSICAL)
def test_rotation_leaves_yaw_and_pitch(variants: dict[str, dict[str, FaceAnalysis]], name: str, angle: int) -> None:
    """Yaw and pitch are measured in the roll-levelled frame: turning the picture changes roll only."""
    ref, rotated = variants[name]["pad"], variants[name][f"rot{angle}"]
    assert rotated.yaw == pytest.approx(ref.yaw, abs=POSE_ROT_TOL), (ref.yaw, rotated.yaw)
    assert rotated.pitch == pytest.approx(ref.pitch, abs=POSE_ROT_TOL), (ref.pitch, rotated.pitch)


@pytest.mark.parametrize("name", PHYSICAL)
def test_padding_alone_changes_nothing_much(variants: dict[str, dict[str, FaceAnalysis]], name: str) -> None:
    base, pad = variants[name]["base"], variants[name]["pad"]
    assert pad.roll == pytest.approx(base.roll, abs=1.5)
    assert pad.yaw == pytest.approx(base.yaw, abs=3.0)


@pytest.mark.parametrize("name", PHYSICAL)
def test_flip_negates_yaw_and_roll_and_swaps_eyes(variants: dict[str, dict[str, FaceAnalysis]], name: str) -> None:
    base, flip = variants[name]["base"], variants[name]["flip"]
    assert flip.yaw == pytest.approx(-base.yaw, abs=YAW_FLIP_TOL), (base.yaw, flip.yaw)
    assert flip.roll == pytest.approx(-base.roll, abs=ROLL_TOL), (base.roll, flip.roll)
    assert flip.left_eye_closed == pytest.approx(base.right_eye_closed, abs=EYE_SWAP_TOL)
    assert flip.right_eye_closed == pytest.approx(base.left_eye_closed, abs=EYE_SWAP_TOL)
    assert flip.eye_dist == pytest.approx(base.eye_dist, rel=0.05)


@pytest.mark.parametrize("name", PHYSICAL)
def test_halving_brightness_halves_luminance(variants: dict[str, dict[str, FaceAnalysis]], name: str) -> None:
    base, half = variants[name]["base"], variants[name]["half"]
    ratio = half.face_luminance / base.face_luminance
    assert 0.4 <= ratio <= 0.6, ratio


@pytest.mark.parametrize("name", PHYSICAL)
def test_covering_the_lower_face_raises_occlusion(variants: dict[str, dict[str, FaceAnalysis]], name: str) -> None:
    v = variants[name]
    assert v["base"].face_occlusion < 0.1
    assert v["cover_black"].face_occlusion - v["base"].face_occlusion > 0.3, v["cover_black"].face_occlusion
    assert v["cover_grey"].face_occlusion - v["base"].face_occlusion > 0.2, v["cover_grey"].face_occlusion
    assert v["cover_black"].face_quality < v["base"].face_quality


def test_face_cut_by_the_image_edge_counts_as_occluded(photo_results: dict[str, FaceResult | None]) -> None:
    full, cut = photo_results["obama_01"], photo_results["obama_05"]  # obama_05: obama_01 with a cheek cut off
    assert full is not None and cut is not None
    assert cut.analysis.face_occlusion > full.analysis.face_occlusion + 0.05


@pytest.mark.parametrize("name", PHYSICAL)
def test_strong_blur_lowers_quality(variants: dict[str, dict[str, FaceAnalysis]], name: str) -> None:
    base, blur = variants[name]["base"], variants[name]["blur"]
    assert blur.face_quality < base.face_quality - 0.05, (base.face_quality, blur.face_quality)


@pytest.mark.parametrize("name", UPRIGHT)
def test_landmarks_lie_within_a_margin_of_the_box(photo_results: dict[str, FaceResult | None], name: str) -> None:
    r = photo_results[name]
    assert r is not None
    a, pts = r.analysis, _points(r.analysis)
    assert pts.shape == (68, 2)
    mx, my = 0.25 * (a.x2 - a.x1), 0.25 * (a.y2 - a.y1)
    assert (pts[:, 0] >= a.x1 - mx).all() and (pts[:, 0] <= a.x2 + mx).all()
    assert (pts[:, 1] >= a.y1 - my).all() and (pts[:, 1] <= a.y2 + my).all()


@pytest.mark.parametrize("name", UPRIGHT)
def test_landmark_groups_in_anatomical_order(photo_results: dict[str, FaceResult | None], name: str) -> None:
    r = photo_results[name]
    assert r is not None
    p = _points(r.analysis)
    y = p[:, 1]
    eyes_y, nose_tip_y, mouth_y = y[36:48].mean(), y[30], y[48:68].mean()
    assert eyes_y < nose_tip_y < mouth_y
    assert y[17:22].mean() < y[36:42].mean() and y[22:27].mean() < y[42:48].mean()  # brows above their eyes
    assert y[27] < y[28] < y[29] < y[30]  # nose bridge runs down to the tip
    assert int(np.argmax(y)) == 8 or y[8] >= y.max() - 1.0  # chin lowest
    # Jaw ends on opposite sides of the nose; iBUG order runs image-left to image-right.
    assert p[0, 0] < p[30, 0] < p[16, 0]
    assert p[36:42, 0].mean() < p[30, 0] < p[42:48, 0].mean()  # 36-41 is the image-left eye
    assert p[36, 0] < p[39, 0] < p[42, 0] < p[45, 0]  # corners: outer, inner | inner, outer
    assert p[48, 0] < p[51, 0] < p[54, 0]  # mouth corners around the cupid's bow
    assert y[51] < y[62] <= y[66] + 0.5 < y[57] + 0.5  # upper lip above inner lips above lower lip
    assert y[37] <= y[41] + 0.5 and y[44] <= y[46] + 0.5  # upper lids above lower lids


@pytest.mark.parametrize("name", UPRIGHT)
def test_eye_dist_is_the_distance_of_the_eye_centres(photo_results: dict[str, FaceResult | None],
                                                     name: str) -> None:
    r = photo_results[name]
    assert r is not None
    p = _points(r.analysis)
    expected = float(np.linalg.norm(p[42:48].mean(axis=0) - p[36:42].mean(axis=0)))
    assert r.analysis.eye_dist == pytest.approx(expected, abs=0.02)  # points are rounded to 0.01 px


@pytest.mark.parametrize("name", ["obama_02", "obama_03", "obama_04", "biden_03"])
def test_yaw_sign_follows_the_nose(photo_results: dict[str, FaceResult | None], name: str) -> None:
    """The nose tip sits on the side the face turns to: yaw > 0 when it is right of the eyes' midpoint."""
    r = photo_results[name]
    assert r is not None
    p = _points(r.analysis)
    offset = p[30, 0] - (p[36:42, 0].mean() + p[42:48, 0].mean()) / 2
    assert abs(r.analysis.yaw) > 8 and abs(offset) > 3, (r.analysis.yaw, offset)
    assert math.copysign(1, r.analysis.yaw) == math.copysign(1, offset)


def test_looking_down_gives_negative_pitch(photo_results: dict[str, FaceResult | None]) -> None:
    r = photo_results["obama_04"]  # signing a letter, looking down (LABELS.csv)
    assert r is not None
    assert r.analysis.pitch < -10


@pytest.mark.parametrize("name", PHYSICAL)
def test_attribute_ranges(photo_results: dict[str, FaceResult | None], name: str) -> None:
    r = photo_results[name]
    assert r is not None
    a = r.analysis
    for field in ("face_occlusion", "face_quality", "left_eye_closed", "right_eye_closed", "mouth_opened"):
        assert 0.0 <= getattr(a, field) <= 1.0, field
    assert 0.0 <= a.face_luminance <= 255.0
    assert a.face_quality > 0.8  # clean, sharp, frontal photos
    assert a.left_eye_closed < 0.3 and a.right_eye_closed < 0.3  # eyes open in all of them
    assert abs(a.pitch) < 20 and abs(a.yaw) < 25 and abs(a.roll) < 15
    assert a.faces_found == 1 and 0.75 <= a.detection_score <= 1.0


# --- formula checks on a real mesh -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mesh(mesh_of: Callable[[RGB], npt.NDArray[np.float32]], photo: Callable[[str], RGB]) -> npt.NDArray[np.float32]:
    return mesh_of(photo("obama_01"))


def _rotate_mesh(mesh: npt.NDArray[np.float32], rot: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    centre = mesh.mean(axis=0)
    return ((mesh - centre) @ rot.T + centre).astype(np.float32)


def _rx(deg: float) -> npt.NDArray[np.float64]:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1, 0, 0], [0, c, s], [0, -s, c]])  # takes the forward vector (0, 0, -1) to (0, -s, -c): up


def _ry(deg: float) -> npt.NDArray[np.float64]:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])  # forward (0, 0, -1) -> (s, 0, -c): towards image right


def _rz(deg: float) -> npt.NDArray[np.float64]:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])  # clockwise as displayed (y down)


@pytest.mark.parametrize("deg", [-25, 10, 25])
def test_head_pose_follows_rigid_rotations(mesh: npt.NDArray[np.float32], deg: float) -> None:
    p0, y0, r0 = head_pose(mesh)
    assert abs(p0) < 10 and abs(y0) < 10 and abs(r0) < 5  # obama_01 is a frontal portrait
    p, y, r = head_pose(_rotate_mesh(mesh, _rz(deg)))
    assert (p, y, r) == pytest.approx((p0, y0, r0 + deg), abs=0.5)
    _, y, _ = head_pose(_rotate_mesh(mesh, _ry(deg)))
    assert y == pytest.approx(y0 + deg, abs=1.5)
    p, _, _ = head_pose(_rotate_mesh(mesh, _rx(deg)))
    assert p == pytest.approx(p0 + deg, abs=1.5)


def test_eye_closure_names_the_subjects_eyes(mesh: npt.NDArray[np.float32]) -> None:
    nose_x = float(mesh[4, 0])
    left_lids = [i for pair in _LEFT_LIDS for i in pair]
    right_lids = [i for pair in _RIGHT_LIDS for i in pair]
    # The subject's left eye is on the image's right in a non-mirrored photo.
    assert mesh[left_lids, 0].min() > nose_x > mesh[right_lids, 0].max()
    left0, right0 = eye_closure(mesh)
    assert left0 < 0.3 and right0 < 0.3
    shut = mesh.copy()
    for upper, lower in _LEFT_LIDS:
        shut[upper] = shut[lower]
    left, right = eye_closure(shut)
    assert left == pytest.approx(1.0)
    # The right eye stays as it was (the inter-eye scale moves a little with the left eye's centre).
    assert right == pytest.approx(right0, abs=0.05)


def test_mouth_opening_scale(mesh: npt.NDArray[np.float32]) -> None:
    closed = mesh.copy()
    for upper, lower in _INNER_LIPS:
        closed[lower] = closed[upper]
    assert mouth_opening(closed) == pytest.approx(0.0)
    wide = closed.copy()
    eye_gap = float(np.linalg.norm(mesh[263] - mesh[33]))
    for _, lower in _INNER_LIPS:
        wide[lower, 1] += 0.6 * eye_gap
    assert mouth_opening(wide) == pytest.approx(1.0)


def test_quality_components_are_monotonic() -> None:
    good = {"eye_dist": 90.0, "sharp": 2000.0, "pitch": 0.0, "yaw": 0.0, "luminance": 128.0, "occlusion": 0.0,
            "eyes_closed": 0.0, "presence": 1.0}
    q_good = face_quality(quality_components(**good))
    assert q_good == pytest.approx(1.0, abs=1e-6)
    worse = [("eye_dist", 20.0), ("sharp", 60.0), ("yaw", 40.0), ("pitch", -35.0), ("luminance", 30.0),
             ("luminance", 240.0), ("occlusion", 0.5), ("eyes_closed", 1.0), ("presence", 0.3)]
    for key, value in worse:
        q = face_quality(quality_components(**{**good, key: value}))
        assert 0.0 <= q < q_good - 0.01, (key, value, q)
    for comp in quality_components(**good).values():
        assert 0.0 <= comp <= 1.0
