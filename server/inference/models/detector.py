"""YuNet face detector: photo-sized (bucketed) canvases, rotated/padded placements and anchor-free decoding with NMS.

Every image is *placed* on a square canvas: scaled (never up), optionally rotated by a multiple of 90 degrees and
padded. A :class:`Placement` records how, so detections map back exactly to the original (EXIF-applied) image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

STRIDES = (8, 16, 32)
INPUT_NAME = "input"
# Canvas sides the detector runs at. A photo goes to the smallest one that holds it at its own size (capped by the
# configured maximum, beyond which it is scaled down), so a 250-px photo costs a 256x256 pass instead of 640x640
# (LFW-size crops and ID-photo thumbnails: 0.64x the pixels of the 320 canvas they had before 256 was added), and
# batches group by bucket: few distinct shapes keep cross-request batching effective.
BUCKETS = (160, 256, 320, 480, 640)
ORIENTATIONS = (0, 90, 180, 270)
# Tried only when no quarter turn shows a confidently upright face: a face ~45 degrees off every quarter turn scores
# about as well (0.8-0.9) in a candidate where it is ~135 degrees off as in the right one, so the quarter turns
# alone pick an upside-down reading for some; one of these leaves it within 22.5 degrees, where it scores >= 0.9.
DIAGONALS = (45, 135, 225, 315)


@dataclass(frozen=True, slots=True)
class Detection:
    """One detected face in original-image pixels.

    ``kps`` is (5, 2) in the face's own order: the subject's right eye, left eye, nose tip, right and left mouth
    corner. For an upright face that is image-left eye first; for a face found on a rotated canvas the points are
    mapped back, so the eye-to-eye direction gives the true in-plane angle.
    """

    box: npt.NDArray[np.float32]  # (4,) x1, y1, x2, y2
    kps: npt.NDArray[np.float32]  # (5, 2)
    score: float

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])


@dataclass(frozen=True, slots=True)
class Placement:
    """How one image was put on a detector canvas.

    The image (``h`` x ``w``) is resized by ``scale`` (<= 1), rotated clockwise by ``rotation`` degrees about its
    centre and put on a ``size`` x ``size`` canvas: quarter turns are pasted pixel-exact at ``offset`` (x, y),
    other angles are centred on the canvas (bilinear).
    """

    h: int
    w: int
    size: int
    scale: float
    rotation: int = 0
    offset: tuple[int, int] = (0, 0)

    @property
    def resized(self) -> tuple[int, int]:
        """(height, width) of the image after scaling, before rotation."""
        return max(1, round(self.h * self.scale)), max(1, round(self.w * self.scale))

    @property
    def quarter_turns(self) -> bool:
        return self.rotation % 90 == 0

    def affine(self) -> npt.NDArray[np.float64]:
        """``(2, 3)`` map from original-image pixel coordinates to canvas coordinates."""
        nh, nw = self.resized
        m = np.array([[nw / self.w, 0.0, 0.0], [0.0, nh / self.h, 0.0], [0.0, 0.0, 1.0]])
        if not self.quarter_turns:
            # Clockwise as displayed (y down): (x, y) -> (x cos - y sin, x sin + y cos) about the centres.
            c, s = math.cos(math.radians(self.rotation)), math.sin(math.radians(self.rotation))
            half = self.size / 2
            rot = np.array([[c, -s, half - c * nw / 2 + s * nh / 2], [s, c, half - s * nw / 2 - c * nh / 2],
                            [0.0, 0.0, 1.0]])
            out: npt.NDArray[np.float64] = (rot @ m)[:2]
            return out
        cur_w, cur_h = nw, nh
        for _ in range((self.rotation // 90) % 4):
            # One clockwise quarter turn of a cur_w x cur_h image: (x, y) -> (cur_h - y, x).
            m = np.array([[0.0, -1.0, cur_h], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) @ m
            cur_w, cur_h = cur_h, cur_w
        m = np.array([[1.0, 0.0, self.offset[0]], [0.0, 1.0, self.offset[1]], [0.0, 0.0, 1.0]]) @ m
        placed: npt.NDArray[np.float64] = m[:2]
        return placed

    def box_to_original(self, box: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """A canvas box ``(4,)`` x1, y1, x2, y2 in original-image pixels (unclipped).

        Quarter turns map exactly. For other angles the box keeps its centre and its size in the face's own frame
        (a face is about as wide at any angle), rather than growing to the bounding box of the turned rectangle.
        """
        out: npt.NDArray[np.float32] = self.boxes_to_original(box[None])[0]
        return out

    def boxes_to_original(self, boxes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """:meth:`box_to_original` for ``(K, 4)`` boxes at once."""
        if self.quarter_turns:
            corners = self.to_original(boxes.reshape(-1, 2, 2))
            return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1).astype(np.float32)
        centre = self.to_original(((boxes[:, :2] + boxes[:, 2:]) / 2).astype(np.float32))
        half = (boxes[:, 2:] - boxes[:, :2]) / (2 * self.scale)
        return np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)

    def to_original(self, pts: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Canvas points ``(..., 2)`` back to original-image pixels."""
        inv = cv2.invertAffineTransform(self.affine())
        p = pts.astype(np.float64)
        x = inv[0, 0] * p[..., 0] + inv[0, 1] * p[..., 1] + inv[0, 2]
        y = inv[1, 0] * p[..., 0] + inv[1, 1] * p[..., 1] + inv[1, 2]
        return np.stack([x, y], axis=-1).astype(np.float32)


def bucket_for(side: float, max_size: int) -> int:
    """The smallest canvas side in :data:`BUCKETS` (and <= ``max_size``) holding ``side`` pixels; else ``max_size``."""
    for b in BUCKETS:
        if b <= max_size and side <= b:
            return b
    return max_size


def place(h: int, w: int, max_size: int, *, pad: float = 0.0, rotation: int = 0) -> Placement:
    """Placement of an ``h`` x ``w`` image: at its own size, turned clockwise by ``rotation`` degrees, with ``pad``
    x its long side of margin on every side, on the smallest bucket canvas that holds it; scaled down to fit
    ``max_size``, and up only to fill the smallest canvas. Padded or turned images are centred; a plain one sits
    top-left.

    Never upscaling matters: YuNet scores a frame-filling face blown up past the face sizes it was trained on
    below the service's threshold (a 200-px crop letterboxed to 640 loses most of its faces at 0.75).
    """
    rotation %= 360
    c, s = abs(math.cos(math.radians(rotation))), abs(math.sin(math.radians(rotation)))
    bw, bh = w * c + h * s, w * s + h * c  # bounding box of the turned image
    long_side = max(bw, bh) * (1.0 + 2.0 * pad)
    scale = min(1.0, max_size / long_side)
    smallest = min(BUCKETS[0], max_size)
    if long_side < smallest:
        # A photo smaller than the smallest canvas fills it: free (the canvas is that size anyway), and a face near
        # the minimum size (FACEREC_MIN_FACE_PX) in a thumbnail is lifted to sizes YuNet finds reliably.
        scale = smallest / long_side
    size = bucket_for(math.ceil(long_side * scale), max_size)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if rotation % 180 == 90:
        nh, nw = nw, nh
    if not pad and rotation == 0:
        # Top-left, like the letterbox before buckets: a photo over max_size gets exactly the canvas it always got.
        return Placement(h, w, size, scale)
    # Centred: a face that fills the photo gets context on all sides, which YuNet needs to score it.
    return Placement(h, w, size, scale, rotation, ((size - nw) // 2, (size - nh) // 2))


class Detector:
    """Pre/post-processing around YuNet; the network itself runs on whatever backend is in use."""

    name = "detector"

    def __init__(self, size: int = 640, score_threshold: float = 0.6, nms_threshold: float = 0.3,
                 min_face_px: int = 24, top_k: int = 50) -> None:
        if size % 32:
            raise ValueError("detector size must be a multiple of 32")
        self.size = size  # the largest canvas side (FACEREC_DETECTOR_SIZE)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.min_face_px = min_face_px
        self.top_k = top_k
        self._grids: dict[tuple[int, int], npt.NDArray[np.float32]] = {}

    def _grid(self, side: int, stride: int) -> npt.NDArray[np.float32]:
        key = (side, stride)
        if key not in self._grids:
            n = side // stride
            rows, cols = np.mgrid[0:n, 0:n]
            # Row-major anchor order (row * cols + col), as the network emits them.
            self._grids[key] = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float32)
        return self._grids[key]

    def place(self, image: npt.NDArray[np.uint8], *, pad: float = 0.0, rotation: int = 0) -> Placement:
        """Where ``image`` goes on a canvas (see :func:`place`)."""
        h, w = image.shape[:2]
        return place(h, w, self.size, pad=pad, rotation=rotation)

    @staticmethod
    def render(image: npt.NDArray[np.uint8], p: Placement, out: npt.NDArray[np.float32] | None = None, *,
               resized: npt.NDArray[np.uint8] | None = None) -> npt.NDArray[np.float32]:
        """One RGB image on its canvas: ``(3, S, S)`` BGR 0..255 float (YuNet was trained on OpenCV's BGR).

        ``out``: a zeroed ``(3, S, S)`` float32 array to draw into (a row of the batch), so the canvas is written
        once, straight from the uint8 pixels. ``resized``: the image already scaled to ``p.resized``.
        """
        canvas = np.zeros((3, p.size, p.size), dtype=np.float32) if out is None else out
        nh, nw = p.resized
        if resized is None:
            resized = Detector.resize(image, p)
        if not p.quarter_turns:
            a = p.affine() @ np.array([[p.w / nw, 0.0, 0.0], [0.0, p.h / nh, 0.0], [0.0, 0.0, 1.0]])
            # warpAffine indexes pixels at their centres (integers); the affine is in continuous coordinates
            # (centres at +0.5): shift in and out by half a pixel.
            a[:, 2] += a[:, :2] @ np.array([0.5, 0.5]) - 0.5
            warped = cv2.warpAffine(resized, a, (p.size, p.size), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
            canvas[...] = warped[:, :, ::-1].transpose(2, 0, 1)
            return canvas
        turned = np.rot90(resized, -(p.rotation // 90)) if p.rotation else resized
        th, tw = turned.shape[:2]
        ox, oy = p.offset
        canvas[:, oy : oy + th, ox : ox + tw] = turned[:, :, ::-1].transpose(2, 0, 1)
        return canvas

    @staticmethod
    def resize(image: npt.NDArray[np.uint8], p: Placement) -> npt.NDArray[np.uint8]:
        """``image`` scaled as ``p`` says (itself when no scaling is needed)."""
        nh, nw = p.resized
        if (nh, nw) == image.shape[:2]:
            return image
        interp = cv2.INTER_AREA if p.scale < 1 else cv2.INTER_LINEAR
        return np.asarray(cv2.resize(image, (nw, nh), interpolation=interp), dtype=np.uint8)

    def preprocess_placed(self, images: list[npt.NDArray[np.uint8]], placements: list[Placement]
                          ) -> npt.NDArray[np.float32]:
        """A ``(N, 3, S, S)`` batch; every placement in it must share one canvas size."""
        sizes = {p.size for p in placements}
        if len(sizes) != 1:
            raise ValueError(f"one detector batch needs one canvas size, got {sorted(sizes)}")
        side = sizes.pop()
        batch = np.zeros((len(placements), 3, side, side), dtype=np.float32)
        # The same image at the same scale (the turns of one photo, the upright check's two readings of one crop)
        # is resized once.
        scaled: dict[tuple[int, tuple[int, int]], npt.NDArray[np.uint8]] = {}
        for img, p, row in zip(images, placements, batch, strict=True):
            key = (id(img), p.resized)
            if key not in scaled:
                scaled[key] = self.resize(img, p)
            self.render(img, p, row, resized=scaled[key])
        return batch

    def preprocess(self, images: list[npt.NDArray[np.uint8]]
                   ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Letterbox RGB images into one ``(N, 3, S, S)`` BGR 0..255 float batch at the maximum size (legacy path:
        benches and callers that want one fixed shape); returns it and per-image scales."""
        n, s = len(images), self.size
        batch = np.zeros((n, s, s, 3), dtype=np.float32)
        scales = np.empty(n, dtype=np.float32)
        for i, img in enumerate(images):
            h, w = img.shape[:2]
            scale = s / max(h, w)
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            resized = cv2.resize(img, (nw, nh), interpolation=interp)
            batch[i, :nh, :nw] = resized[:, :, ::-1]
            scales[i] = scale
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2)), scales

    def _nms(self, scores: npt.NDArray[np.float32], boxes: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
        keep = np.flatnonzero(scores >= self.score_threshold)
        if not keep.size:
            return keep.astype(np.int64)
        b = boxes[keep]
        xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
        idx = cv2.dnn.NMSBoxes(xywh.tolist(), scores[keep].tolist(), self.score_threshold, self.nms_threshold,
                               top_k=self.top_k)
        return keep[np.asarray(idx, dtype=np.int64).reshape(-1)]

    def _candidates(self, outputs: dict[str, npt.NDArray[np.float32]], side: int, i: int
                    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Image ``i``'s anchors scoring at least the threshold: scores ``(K,)``, boxes ``(K, 4)`` and keypoints
        ``(K, 5, 2)`` in canvas pixels, in the network's anchor order (stride 8, 16, 32; row-major).

        Only the anchors that can be kept are decoded (a few of the 2,100-8,400), the rest cost just their score.
        """
        scores_all, boxes_all, kps_all = [], [], []
        for s in STRIDES:
            cls = np.clip(outputs[f"cls_{s}"][i, :, 0], 0, 1)
            obj = np.clip(outputs[f"obj_{s}"][i, :, 0], 0, 1)
            scores = np.sqrt(cls * obj)
            k = np.flatnonzero(scores >= self.score_threshold)
            if not k.size:
                continue
            grid = self._grid(side, s)[k]
            bbox = outputs[f"bbox_{s}"][i, k]
            centre = (grid + bbox[:, :2]) * s
            wh = np.exp(bbox[:, 2:4]) * s
            scores_all.append(scores[k])
            boxes_all.append(np.concatenate([centre - wh / 2, centre + wh / 2], axis=-1))
            kps_all.append((outputs[f"kps_{s}"][i, k].reshape(-1, 5, 2) + grid[:, None, :]) * s)
        if not scores_all:
            return (np.zeros(0, np.float32), np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32))
        return np.concatenate(scores_all), np.concatenate(boxes_all), np.concatenate(kps_all)

    def postprocess_placed(self, outputs: dict[str, npt.NDArray[np.float32]], placements: list[Placement],
                           min_face_px: Sequence[float] | None = None) -> list[list[Detection]]:
        """Detections per placed image (best score first) in original-image pixels, boxes clipped to the image.

        ``min_face_px[i]``: the smallest face kept in image ``i``, in its pixels (default ``self.min_face_px``; an
        image decoded at 1/s of its size keeps faces from ``min_face_px / s``, the same faces as at full size).
        """
        side = placements[0].size
        results: list[list[Detection]] = []
        for i, p in enumerate(placements):
            scores, boxes, kpss = self._candidates(outputs, side, i)
            keep = self._nms(scores, boxes)
            if not keep.size:
                results.append([])
                continue
            box = p.boxes_to_original(boxes[keep])
            box[:, [0, 2]] = np.clip(box[:, [0, 2]], 0, p.w)
            box[:, [1, 3]] = np.clip(box[:, [1, 3]], 0, p.h)
            kps = p.to_original(kpss[keep])
            smallest = self.min_face_px if min_face_px is None else min_face_px[i]
            big = np.minimum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]) >= smallest
            results.append([Detection(box[j].copy(), kps[j].copy(), float(scores[keep[j]]))
                            for j in np.flatnonzero(big)])
        return results

    def postprocess(
        self, outputs: dict[str, npt.NDArray[np.float32]], scales: npt.NDArray[np.float32],
        sizes: list[tuple[int, int]],
    ) -> list[list[Detection]]:
        """Decode a letterboxed batch from :meth:`preprocess` (legacy path) into per-image detections."""
        placements = [Placement(h, w, self.size, float(s)) for (h, w), s in zip(sizes, scales, strict=True)]
        return self.postprocess_placed(outputs, placements)


def square_crop(image: npt.NDArray[np.uint8], box: npt.NDArray[np.float32], factor: float
                ) -> tuple[npt.NDArray[np.uint8], tuple[int, int]]:
    """A square crop ``factor`` x the box's long side around its centre (zeros outside the image) and its top-left
    corner in the image."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    n = max(2, round(factor * max(box[2] - box[0], box[3] - box[1])))
    x0, y0 = round(cx - n / 2), round(cy - n / 2)
    h, w = image.shape[:2]
    out = np.zeros((n, n, 3), dtype=np.uint8)
    xs, ys, xe, ye = max(0, x0), max(0, y0), min(w, x0 + n), min(h, y0 + n)
    if xe > xs and ye > ys:
        out[ys - y0 : ye - y0, xs - x0 : xe - x0] = image[ys:ye, xs:xe]
    return out, (x0, y0)


def shifted(det: Detection, origin: tuple[int, int], size: tuple[int, int]) -> Detection:
    """``det`` found in a crop whose top-left corner is ``origin``, in image coordinates (box clipped to ``size``)."""
    off = np.array(origin, dtype=np.float32)
    box = det.box + np.concatenate([off, off])
    box[[0, 2]] = np.clip(box[[0, 2]], 0, size[1])
    box[[1, 3]] = np.clip(box[[1, 3]], 0, size[0])
    return Detection(box.astype(np.float32), (det.kps + off).astype(np.float32), det.score)


def nearest_centre(dets: list[Detection], size: tuple[int, int]) -> Detection | None:
    """The detection whose box centre is nearest the centre of a ``size`` (h, w) image."""
    h, w = size
    return min(dets, key=lambda d: float(np.hypot((d.box[0] + d.box[2]) / 2 - w / 2,
                                                  (d.box[1] + d.box[3]) / 2 - h / 2)), default=None)


def eye_angle(kps: npt.NDArray[np.float32]) -> float:
    """Angle in degrees (clockwise as displayed, -180..180) of the line from the first to the second eye point."""
    d = kps[1] - kps[0]
    return math.degrees(math.atan2(float(d[1]), float(d[0])))


def most_prominent(dets: list[Detection], size: tuple[int, int]) -> int:
    """Index of the face to compare: the largest, discounted by distance from the image centre.

    prominence = area * (1 - 0.5 * d^2), d = box-centre distance to the image centre over the half-diagonal.
    A corner face (d ~ 1) must be about twice the area of a central one to win, so a bystander at the edge
    never beats the subject, while a clearly larger face still does.
    """
    h, w = size
    half_diag = 0.5 * float(np.hypot(w, h))
    best, best_score = 0, -1.0
    for i, d in enumerate(dets):
        cx, cy = (d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2
        dist = float(np.hypot(cx - w / 2, cy - h / 2)) / half_diag
        score = d.width * d.height * (1.0 - 0.5 * min(dist, 1.0) ** 2)
        if score > best_score:
            best, best_score = i, score
    return best
