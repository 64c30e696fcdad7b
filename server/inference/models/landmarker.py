"""FaceMesh landmarker: rotation-aligned ROI crops in, 468 3-D points in original-image pixels out."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from server.inference.backend import ModelSpec

CROP = 192
# FaceMesh was trained on crops about 1.5x the face box, rotated so the eyes are level.
ROI_SCALE = 1.5
# The first landmark pass starts part of the way to where the refinement passes settle, so most faces meet the
# convergence rule a pass earlier. FaceMesh draws a larger mesh in a looser crop, so each pass shrinks the ROI drawn
# from YuNet's box (about 6 % in the first pass, 5 % in the second) and moves it down the face; after four passes
# the ROI is 0.89x the box ROI's side and 0.023 x it lower on the first 200 lfw-dev pairs (0.87x and 0.04 on
# ../shared/faces). Starting at 0.96x and 0.015 lower cut the landmarker rows per lfw-dev face from 2.79 to 2.21
# with the same lfw-dev accuracy and bench.attributes' roll and flip errors within 0.1 degree of the box start.
# Starting closer (0.93x: 2.04 rows, 0.89x: 1.97) leaves each face's passes stopping further from the settled ROI,
# so a photo and the same photo turned a quarter end on readings further apart: tests/unit/inference/test_robust.py
# then saw similarity 0.021 apart (limit 0.02) and eye centres 3.1 px apart (limit 3), against 0.015 and 2.5 px
# here (bench/README "Throughput targets"). No turn: a fixed one would break the left-right symmetry of the flip.
FIRST_ROI_SIZE = 0.96
FIRST_ROI_DOWN = 0.015


def roi_affines(centres: npt.NDArray[np.float32], sizes: npt.NDArray[np.float32],
                angles: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Image -> crop affine matrices ``(M, 2, 3)`` for square ROIs of side ``sizes`` rotated by ``angles`` (rad)."""
    c, s = np.cos(angles), np.sin(angles)
    k = CROP / sizes
    cx, cy = centres[:, 0], centres[:, 1]
    a = np.empty((len(sizes), 2, 3), dtype=np.float64)
    a[:, 0, 0], a[:, 0, 1] = k * c, k * s
    a[:, 0, 2] = -k * (c * cx + s * cy) + CROP / 2
    a[:, 1, 0], a[:, 1, 1] = -k * s, k * c
    a[:, 1, 2] = k * (s * cx - c * cy) + CROP / 2
    return a


@dataclass(frozen=True, slots=True)
class Rois:
    """Square, rotated ROIs of ``M`` faces: centres ``(M, 2)`` and sides ``(M,)`` in image pixels, angles (rad)."""

    centres: npt.NDArray[np.float32]
    sizes: npt.NDArray[np.float32]
    angles: npt.NDArray[np.float32]

    def affines(self) -> npt.NDArray[np.float64]:
        return roi_affines(self.centres, self.sizes, self.angles)

    def take(self, index: npt.NDArray[np.intp]) -> Rois:
        return Rois(self.centres[index], self.sizes[index], self.angles[index])

    def put(self, index: npt.NDArray[np.intp], other: Rois) -> Rois:
        """A copy with rows ``index`` replaced by ``other``."""
        centres, sizes, angles = self.centres.copy(), self.sizes.copy(), self.angles.copy()
        centres[index], sizes[index], angles[index] = other.centres, other.sizes, other.angles
        return Rois(centres, sizes, angles)

    def converged(self, nxt: Rois, *, roll_deg: float, shift: float) -> npt.NDArray[np.bool_]:
        """Per ROI: ``nxt`` turned by under ``roll_deg`` degrees, and moved its centre and changed its side by under
        ``shift`` x this ROI's side: another landmark pass on ``nxt`` would land on (almost) the same crop."""
        turn = np.abs((np.degrees(nxt.angles.astype(np.float64) - self.angles) + 180.0) % 360.0 - 180.0)
        tol = shift * self.sizes.astype(np.float64)
        moved = np.hypot(*(nxt.centres.astype(np.float64) - self.centres).T)
        resized = np.abs(nxt.sizes.astype(np.float64) - self.sizes)
        out: npt.NDArray[np.bool_] = (turn < roll_deg) & (moved < tol) & (resized < tol)
        return out


class Landmarker:
    """Pre/post-processing around the FaceMesh network."""

    name = "landmarker"

    def __init__(self, spec: ModelSpec) -> None:
        self.input_name = spec.inputs[0].name
        # Output names depend on the converter; identify them by size (1404 = 468 x 3, and the presence logit).
        sized = {o.name: int(np.prod([d for d in o.dims if d > 0])) for o in spec.outputs}
        self.mesh_name = next(n for n, size in sized.items() if size == 1404)
        self.presence_name = next(n for n, size in sized.items() if size == 1)

    @staticmethod
    def roi_params(boxes: npt.NDArray[np.float32], eyes: npt.NDArray[np.float32]) -> Rois:
        """ROIs from detector boxes ``(M, 4)`` and eye points ``(M, 2, 2)`` (image-left eye first)."""
        centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
        sizes = ROI_SCALE * np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        d = eyes[:, 1] - eyes[:, 0]
        return Rois(centres.astype(np.float32), sizes.astype(np.float32),
                    np.arctan2(d[:, 1], d[:, 0]).astype(np.float32))

    @staticmethod
    def first_rois(boxes: npt.NDArray[np.float32], eyes: npt.NDArray[np.float32]) -> Rois:
        """The first landmark pass's ROIs: :meth:`roi_params` shrunk and moved down the face (along its own
        vertical axis, so a tilted or upside-down face moves the right way), towards where the passes settle."""
        r = Landmarker.roi_params(boxes, eyes)
        a = r.angles.astype(np.float64)
        down = FIRST_ROI_DOWN * r.sizes.astype(np.float64)
        centres = r.centres + np.stack([-np.sin(a) * down, np.cos(a) * down], axis=1)
        return Rois(centres.astype(np.float32), (r.sizes * FIRST_ROI_SIZE).astype(np.float32), r.angles)

    @staticmethod
    def rois(boxes: npt.NDArray[np.float32], eyes: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Affines for ROIs from detector boxes ``(M, 4)`` and eye points ``(M, 2, 2)`` (image-left eye first)."""
        return Landmarker.roi_params(boxes, eyes).affines()

    @staticmethod
    def roi_params_from_mesh(mesh: npt.NDArray[np.float32]) -> Rois:
        """Refined ROIs from a mesh ``(M, 468, 3)``: centred on the mesh, sized by its rotated extent."""
        # Eye outer corners (33: image-left, 263: image-right) give the roll more precisely than the detector.
        d = mesh[:, 263, :2] - mesh[:, 33, :2]
        ang = np.arctan2(d[:, 1], d[:, 0])
        c, s = np.cos(ang), np.sin(ang)
        pts = mesh[:, :, :2]
        centre0 = (pts.max(axis=1) + pts.min(axis=1)) / 2
        rel = pts - centre0[:, None]
        u = c[:, None] * rel[..., 0] + s[:, None] * rel[..., 1]
        v = -s[:, None] * rel[..., 0] + c[:, None] * rel[..., 1]
        umax, umin, vmax, vmin = u.max(1), u.min(1), v.max(1), v.min(1)
        umid, vmid = (umax + umin) / 2, (vmax + vmin) / 2
        centres = centre0 + np.stack([c * umid - s * vmid, s * umid + c * vmid], axis=1)
        sizes = ROI_SCALE * np.maximum(umax - umin, vmax - vmin)
        return Rois(centres.astype(np.float32), sizes.astype(np.float32), ang.astype(np.float32))

    @staticmethod
    def rois_from_mesh(mesh: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Affines of :meth:`roi_params_from_mesh`."""
        return Landmarker.roi_params_from_mesh(mesh).affines()

    def preprocess(self, images: list[npt.NDArray[np.uint8]], image_index: npt.NDArray[np.intp],
                   affines: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
        """Warp each ROI to a ``(M, 3, 192, 192)`` RGB 0..1 batch (the images: RGB, or RGBA with the same RGB)."""
        channels = images[int(image_index[0])].shape[2] if len(image_index) else 3
        crops = np.empty((len(affines), CROP, CROP, channels), dtype=np.uint8)
        for m, (i, a) in enumerate(zip(image_index, affines, strict=True)):
            cv2.warpAffine(images[i], a, (CROP, CROP), dst=crops[m], flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        # One pass from the uint8 crops to the scaled planar batch (no intermediate float copy).
        batch = np.empty((len(affines), 3, CROP, CROP), dtype=np.float32)
        np.multiply(crops[..., :3].transpose(0, 3, 1, 2), np.float32(1 / 255), out=batch)
        return batch

    def postprocess(self, outputs: dict[str, npt.NDArray[np.float32]], affines: npt.NDArray[np.float64]
                    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Mesh ``(M, 468, 3)`` in original pixels (z in the same pixel scale) and presence probability ``(M,)``."""
        pts = outputs[self.mesh_name].reshape(-1, 468, 3).astype(np.float64)
        a = affines
        k = np.hypot(a[:, 0, 0], a[:, 0, 1])  # crop pixels per image pixel
        c, s = a[:, 0, 0] / k, a[:, 0, 1] / k
        u = (pts[..., 0] - CROP / 2) / k[:, None]
        v = (pts[..., 1] - CROP / 2) / k[:, None]
        # Invert the rotation about the ROI centre; the centre is where crop (96, 96) maps back to.
        det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
        cx = (a[:, 1, 1] * (CROP / 2 - a[:, 0, 2]) - a[:, 0, 1] * (CROP / 2 - a[:, 1, 2])) / det
        cy = (-a[:, 1, 0] * (CROP / 2 - a[:, 0, 2]) + a[:, 0, 0] * (CROP / 2 - a[:, 1, 2])) / det
        x = cx[:, None] + c[:, None] * u - s[:, None] * v
        y = cy[:, None] + s[:, None] * u + c[:, None] * v
        z = pts[..., 2] / k[:, None]
        mesh = np.stack([x, y, z], axis=-1).astype(np.float32)
        logit = outputs[self.presence_name].reshape(-1).astype(np.float64)
        presence = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        return mesh, presence
