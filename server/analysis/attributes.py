"""Per-face attributes from the 3-D mesh, the 68 points and the pixels: pose, eyes, mouth, light, occlusion, quality.

Conventions (documented in the README): image coordinates have x to the right and y down; angles are degrees.
``yaw`` > 0 when the face turns towards the image's right (the subject's left); ``pitch`` > 0 when the subject
looks up; ``roll`` > 0 when the head tilts clockwise as displayed (the image-right eye lower than the image-left eye).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from server.domain import FaceAnalysis, Point, QualityComponents

NDF = npt.NDArray[np.float32]

# Mirror-symmetric FaceMesh vertex pairs (subject's right, subject's left) spanning the face horizontally.
_SYMMETRIC_PAIRS = ((33, 263), (133, 362), (234, 454), (61, 291), (127, 356), (93, 323), (70, 300))
_CHIN, _NASION = 152, 168
# Pitch of the chin->nasion line of a level, frontal face in the mesh's own frame, measured as the median over
# the LFW dev images (mostly frontal); subtracting it makes a frontal face read pitch ~ 0.
PITCH_OFFSET_DEG = -9.7
# Eyelid pairs (upper, lower) per eye, subject's right eye first; the mesh's 2-D distance between them is the opening.
_RIGHT_LIDS = ((159, 145), (158, 153), (160, 144))
_LEFT_LIDS = ((386, 374), (385, 380), (387, 373))
_INNER_LIPS = ((13, 14), (82, 87), (312, 317))
# Eyelid gap / 3-D inter-eye distance: open eyes measure 0.09-0.15 on LFW (5th-95th percentile), shut lids ~0.03.
EYE_OPEN_RATIO = 0.10
EYE_SHUT_RATIO = 0.035
# Inner-lip gap / inter-eye distance: closed lips measure <= 0.03, a wide-open mouth 0.5 or more.
MOUTH_CLOSED_RATIO = 0.03
MOUTH_FULL_RATIO = 0.5


@dataclass(frozen=True, slots=True)
class FaceGeometry:
    """Everything the models said about one face (all in original-image pixels)."""

    box: NDF  # (4,)
    kps: NDF  # (5, 2) detector keypoints
    score: float
    faces_found: int
    mesh: NDF  # (468, 3)
    points68: NDF  # (68, 3)
    presence: float
    # The image was decoded at 1/scale of its size (JPEG DCT scaling): all of the above are in its pixels, and the
    # analysis reports them in the full-size image's.
    scale: int = 1


def _unit(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Rows of ``v`` (..., 3) scaled to length 1 (left as they are when shorter than 1e-9)."""
    out: npt.NDArray[np.float64] = v / np.maximum(np.sqrt((v * v).sum(axis=-1, keepdims=True)), 1e-9)
    return out


def head_poses(meshes: NDF) -> npt.NDArray[np.float64]:
    """``(M, 3)`` (pitch, yaw, roll) in degrees of meshes ``(M, 468, 3)``, from each mesh's own 3-D axes."""
    m = meshes.astype(np.float64)
    x_axis = np.zeros((len(m), 3))
    for r, left in _SYMMETRIC_PAIRS:
        x_axis += _unit(m[:, left] - m[:, r])
    x_axis = _unit(x_axis)
    down = m[:, _CHIN] - m[:, _NASION]
    y_axis = _unit(down - (down * x_axis).sum(axis=1, keepdims=True) * x_axis)
    z_axis = np.cross(x_axis, y_axis)  # points into the image, away from the camera
    fwd = -z_axis  # the way the face looks, still tilted by the chin->nasion line's own pitch
    # Remove that tilt as a rotation about the face's own x axis (Rodrigues; x is orthogonal to fwd), not by
    # subtracting degrees afterwards: a subtracted offset leaks into yaw as soon as the head is rolled.
    off = math.radians(PITCH_OFFSET_DEG)
    fwd = fwd * math.cos(off) + np.cross(x_axis, fwd) * math.sin(off)
    roll = np.arctan2(x_axis[:, 1], x_axis[:, 0])
    # Yaw and pitch in the roll-levelled frame (Z-Y-X order: roll outermost), so rotating the picture about the
    # camera axis changes roll only.
    c, s = np.cos(roll), np.sin(roll)
    fx, fy, fz = c * fwd[:, 0] + s * fwd[:, 1], -s * fwd[:, 0] + c * fwd[:, 1], fwd[:, 2]
    yaw = np.degrees(np.arctan2(fx, -fz))
    pitch = np.degrees(np.arctan2(-fy, np.hypot(fx, fz)))
    return np.stack([pitch, yaw, np.degrees(roll)], axis=1)


def head_pose(mesh: NDF) -> tuple[float, float, float]:
    """(pitch, yaw, roll) in degrees from the mesh's own 3-D axes."""
    pitch, yaw, roll = head_poses(mesh[None])[0].tolist()
    return pitch, yaw, roll


def _openings(meshes: NDF, pairs: tuple[tuple[int, int], ...]) -> npt.NDArray[np.float64]:
    # 3-D distances: unlike 2-D ones they do not shrink when the head turns or tilts.
    a, b = [i for i, _ in pairs], [j for _, j in pairs]
    d = meshes[:, a].astype(np.float64) - meshes[:, b]
    out: npt.NDArray[np.float64] = np.sqrt((d * d).sum(axis=-1)).mean(axis=1)
    return out


def _eye_distances_3d(meshes: NDF) -> npt.NDArray[np.float64]:
    right = meshes[:, [33, 133, 159, 145]].astype(np.float64).mean(axis=1)
    left = meshes[:, [263, 362, 386, 374]].astype(np.float64).mean(axis=1)
    d = left - right
    out: npt.NDArray[np.float64] = np.sqrt((d * d).sum(axis=-1))
    return out


def eye_distance_3d(mesh: NDF) -> float:
    """Distance between the eye centres in 3-D (mesh units = image pixels), invariant to head pose."""
    return float(_eye_distances_3d(mesh[None])[0])


def openings(meshes: NDF) -> npt.NDArray[np.float64]:
    """``(M, 3)`` (left_eye_closed, right_eye_closed, mouth_opened) of meshes ``(M, 468, 3)``: eyes 0 = open,
    1 = shut (subject's eyes); mouth 0 = lips together, 1 = wide open. Gaps relative to the 3-D eye distance."""
    eye_dist = np.maximum(_eye_distances_3d(meshes), 1e-6)

    def closed(pairs: tuple[tuple[int, int], ...]) -> npt.NDArray[np.float64]:
        r = _openings(meshes, pairs) / eye_dist
        out: npt.NDArray[np.float64] = np.clip((EYE_OPEN_RATIO - r) / (EYE_OPEN_RATIO - EYE_SHUT_RATIO), 0.0, 1.0)
        return out

    mouth = _openings(meshes, _INNER_LIPS) / eye_dist
    opened = np.clip((mouth - MOUTH_CLOSED_RATIO) / (MOUTH_FULL_RATIO - MOUTH_CLOSED_RATIO), 0.0, 1.0)
    return np.stack([closed(_LEFT_LIDS), closed(_RIGHT_LIDS), opened], axis=1)


def eye_closure(mesh: NDF) -> tuple[float, float]:
    """(left_eye_closed, right_eye_closed) for the subject's eyes, 0 = open, 1 = shut."""
    left, right, _ = openings(mesh[None])[0].tolist()
    return left, right


def mouth_opening(mesh: NDF) -> float:
    """0 = lips together, 1 = wide open (inner-lip gap relative to the inter-eye distance)."""
    return float(openings(mesh[None])[0, 2])


def _fill_hull(mask: npt.NDArray[np.uint8], pts: npt.NDArray[np.float64], origin: tuple[int, int], value: int
               ) -> None:
    """Set the pixels of ``mask`` inside the convex hull of ``pts`` (image pixels; ``origin`` is the mask's
    top-left corner in the image) to ``value``."""
    shifted = np.round(pts - np.array(origin)).astype(np.int32)
    cv2.fillConvexPoly(mask, cv2.convexHull(shifted), value)


@dataclass(frozen=True, slots=True)
class _Region:
    """The face's convex hull clipped to the image, as a mask over a crop of the image."""

    ycrcb: npt.NDArray[np.uint8]
    mask: npt.NDArray[np.uint8]  # 1 inside the hull (and inside the image)
    skin_mask: npt.NDArray[np.uint8]  # hull minus eyes, brows and mouth
    outside_fraction: float  # hull area that falls outside the image


def _face_region(image: npt.NDArray[np.uint8], pts68: NDF) -> _Region:
    h, w = image.shape[:2]
    hull_pts = pts68[:27, :2].astype(np.float64)  # jaw + brows outline the face
    full_area = float(cv2.contourArea(cv2.convexHull(hull_pts.astype(np.float32))))
    x0, y0 = (max(0, int(np.floor(v))) for v in hull_pts.min(axis=0))
    x1, y1 = int(min(w, np.ceil(hull_pts[:, 0].max()) + 1)), int(min(h, np.ceil(hull_pts[:, 1].max()) + 1))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    crop = image[y0:y1, x0:x1]
    shape = crop.shape[:2]
    mask = np.zeros(shape, dtype=np.uint8)
    _fill_hull(mask, hull_pts, (x0, y0), 1)
    skin = mask.copy()
    for part in (slice(36, 42), slice(42, 48), slice(48, 60), slice(17, 22), slice(22, 27)):
        pts = pts68[part, :2].astype(np.float64)
        centre = pts.mean(axis=0)
        # Grow each feature a little: lashes, lip edges and brow hair are not skin either.
        _fill_hull(skin, centre + (pts - centre) * 1.3, (x0, y0), 0)
    inside = float(mask.sum())
    outside = 0.0 if full_area <= 0 else float(np.clip(1.0 - inside / full_area, 0.0, 1.0))
    ycrcb = np.asarray(cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2YCrCb), dtype=np.uint8)
    return _Region(ycrcb, mask, skin, outside)


def face_luminance(region: _Region) -> float:
    """Mean luma (BT.601, 0..255) over the face hull."""
    sel = region.mask > 0
    return float(region.ycrcb[..., 0][sel].mean()) if sel.any() else 0.0


# Generic skin chroma box in YCrCb, wide enough for all skin tones; only used to seed the face's own skin colour.
_CR_RANGE, _CB_RANGE = (128, 180), (70, 135)
# Fraction of a clean face's skin area that is legitimately not skin-coloured (stubble, glasses, shadow).
_OCCLUSION_BASELINE = 0.12


def face_occlusion(region: _Region) -> float:
    """Estimated occluded fraction 0..1 of the face.

    Two kinds of evidence: the part of the face hull that lies outside the image, and, inside it, the share of
    skin-area pixels (the hull minus eyes, brows and mouth) whose colour is inconsistent with the face's own skin
    colour (seeded from pixels in a generic skin chroma range). In grayscale images only luma is compared.
    """
    sel = region.skin_mask > 0
    if not sel.any():
        return float(min(1.0, region.outside_fraction + 0.0))
    # One gather of the skin pixels, then each channel contiguous.
    y, cr, cb = np.ascontiguousarray(region.ycrcb[sel].T, dtype=np.float32)
    chroma_spread = float(np.std(cr) + np.std(cb))
    seed = (cr >= _CR_RANGE[0]) & (cr <= _CR_RANGE[1]) & (cb >= _CB_RANGE[0]) & (cb <= _CB_RANGE[1]) & (y > 30)
    if chroma_spread > 2.0 and seed.mean() > 0.15:
        ref_cr, ref_cb, ref_y = float(np.median(cr[seed])), float(np.median(cb[seed])), float(np.median(y[seed]))
        tol = 14.0
        ok = (np.abs(cr - ref_cr) <= tol) & (np.abs(cb - ref_cb) <= tol)
    else:
        ref_y = float(np.median(y))
        ok = np.ones_like(y, dtype=bool)
    # Shading varies a lot over a face; only very dark or very bright departures count as foreign.
    ok &= (y >= 0.35 * ref_y) & (y <= max(2.2 * ref_y, ref_y + 40))
    foreign = float(1.0 - ok.mean())
    inside = float(np.clip((foreign - _OCCLUSION_BASELINE) / (1.0 - _OCCLUSION_BASELINE), 0.0, 1.0))
    total = region.outside_fraction + (1.0 - region.outside_fraction) * inside
    return float(np.clip(total, 0.0, 1.0))


def sharpness(crop: npt.NDArray[np.uint8]) -> float:
    """Variance of the Laplacian of the aligned 112x112 face (scale-normalised by the alignment)."""
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_32F, ksize=3)[8:-8, 8:-8].var())


def _ramp(v: float, lo: float, hi: float) -> float:
    return float(np.clip((v - lo) / (hi - lo), 0.0, 1.0))


# Weights of the quality components (sum 1), after OFIQ / ISO/IEC 29794-5's component list.
QUALITY_WEIGHTS = {"size": 0.2, "sharpness": 0.2, "pose": 0.2, "illumination": 0.1, "occlusion": 0.2,
                   "eyes": 0.05, "presence": 0.05}


def quality_components(eye_dist: float,  # noqa: PLR0917 - one argument per component keeps call sites readable
                        sharp: float, pitch: float, yaw: float, luminance: float,
                       occlusion: float, eyes_closed: float, presence: float) -> dict[str, float]:
    """Each component of ``face_quality`` in 0..1 (1 = ideal for recognition)."""
    return {
        # ISO/IEC 19794-5 asks for >= 60 px between the eyes (90 preferred); below ~15 px recognition fails.
        "size": _ramp(eye_dist, 15.0, 60.0),
        # Laplacian variance of the aligned crop: sharp LFW faces measure 460-6500, a heavy blur falls below 50.
        "sharpness": _ramp(math.log10(max(sharp, 1e-3)), 1.7, 2.9),
        "pose": math.exp(-((yaw / 40.0) ** 2) - ((pitch / 35.0) ** 2)),
        "illumination": float(np.clip(1.0 - ((luminance - 128.0) / 118.0) ** 2, 0.0, 1.0)),
        "occlusion": 1.0 - occlusion,
        "eyes": 1.0 - 0.8 * eyes_closed,
        "presence": presence,
    }


def face_quality(components: dict[str, float]) -> float:
    """Weighted geometric mean of the components: one bad component pulls the whole score down."""
    log_q = sum(w * math.log(max(components[k], 1e-3)) for k, w in QUALITY_WEIGHTS.items())
    return float(np.clip(math.exp(log_q), 0.0, 1.0))


def analyze_face(image: npt.NDArray[np.uint8], g: FaceGeometry, crop: npt.NDArray[np.uint8],
                 pose: tuple[float, float, float] | None = None,
                 opened: tuple[float, float, float] | None = None) -> FaceAnalysis:
    """All attributes of one face (``pose`` and ``opened``: its :func:`head_poses` and :func:`openings` row when
    computed for a whole batch)."""
    pts = g.points68
    # Pixel centres: pixel x of an image decoded at 1/s covers original pixels s*x .. s*x + s - 1.
    out = pts[:, :2] if g.scale == 1 else (pts[:, :2] + 0.5) * g.scale - 0.5
    eye_r, eye_l = out[36:42].mean(axis=0), out[42:48].mean(axis=0)
    eye_dist = float(np.linalg.norm(eye_l - eye_r))
    pitch, yaw, roll = head_pose(g.mesh) if pose is None else pose
    left_closed, right_closed, mouth = openings(g.mesh[None])[0].tolist() if opened is None else opened
    region = _face_region(image, pts)
    lum = face_luminance(region)
    occ = face_occlusion(region)
    comps = quality_components(eye_dist, sharpness(crop), pitch, yaw, lum, occ, max(left_closed, right_closed),
                               g.presence)
    x1, y1, x2, y2 = (round(float(v)) for v in g.box * g.scale)
    return FaceAnalysis(
        x1=x1, y1=y1, x2=x2, y2=y2,
        landmark_68=tuple(Point(round(x, 2), round(y, 2)) for x, y in out.tolist()),
        eye_dist=round(eye_dist, 3),
        face_luminance=round(lum, 3),
        face_occlusion=round(occ, 4),
        face_quality=round(face_quality(comps), 4),
        left_eye_closed=round(left_closed, 4),
        right_eye_closed=round(right_closed, 4),
        mouth_opened=round(mouth, 4),
        pitch=round(pitch, 2), yaw=round(yaw, 2), roll=round(roll, 2),
        detection_score=round(g.score, 4),
        faces_found=g.faces_found,
        quality_components=QualityComponents.of(comps),
    )


def analyze_faces(images: list[npt.NDArray[np.uint8]], index: npt.NDArray[np.intp], geoms: list[FaceGeometry],
                  crops: npt.NDArray[np.uint8]) -> list[FaceAnalysis]:
    """Attributes of a batch of faces; ``index[m]`` says which image face ``m`` came from. Pose and openings are
    computed for the whole batch at once."""
    if not geoms:
        return []
    meshes = np.stack([g.mesh for g in geoms])
    poses, opened = head_poses(meshes).tolist(), openings(meshes).tolist()
    return [analyze_face(images[i], g, crops[m], tuple(poses[m]), tuple(opened[m]))
            for m, (i, g) in enumerate(zip(index, geoms, strict=True))]
