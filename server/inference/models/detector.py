"""YuNet face detector: letterboxed batch preprocessing and vectorised anchor-free decoding with NMS."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

STRIDES = (8, 16, 32)
INPUT_NAME = "input"


@dataclass(frozen=True, slots=True)
class Detection:
    """One detected face in original-image pixels.

    ``kps`` is (5, 2): image-left eye, image-right eye, nose tip, image-left mouth corner, image-right mouth corner.
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


class Detector:
    """Pre/post-processing around YuNet; the network itself runs on whatever backend is in use."""

    name = "detector"

    def __init__(self, size: int = 640, score_threshold: float = 0.6, nms_threshold: float = 0.3,
                 min_face_px: int = 24, top_k: int = 50) -> None:
        if size % 32:
            raise ValueError("detector size must be a multiple of 32")
        self.size = size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.min_face_px = min_face_px
        self.top_k = top_k
        self._grids = {s: self._grid(size // s) for s in STRIDES}

    @staticmethod
    def _grid(n: int) -> npt.NDArray[np.float32]:
        rows, cols = np.mgrid[0:n, 0:n]
        # Row-major anchor order (row * cols + col), as the network emits them.
        return np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float32)

    def preprocess(self, images: list[npt.NDArray[np.uint8]]
                   ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Letterbox RGB images into one ``(N, 3, S, S)`` BGR 0..255 float batch; returns it and per-image scales."""
        n, s = len(images), self.size
        batch = np.zeros((n, s, s, 3), dtype=np.float32)
        scales = np.empty(n, dtype=np.float32)
        for i, img in enumerate(images):
            h, w = img.shape[:2]
            scale = s / max(h, w)
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            resized = cv2.resize(img, (nw, nh), interpolation=interp)
            batch[i, :nh, :nw] = resized[:, :, ::-1]  # RGB -> BGR: YuNet was trained on OpenCV's BGR frames
            scales[i] = scale
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2)), scales

    def postprocess(
        self, outputs: dict[str, npt.NDArray[np.float32]], scales: npt.NDArray[np.float32],
        sizes: list[tuple[int, int]],
    ) -> list[list[Detection]]:
        """Decode raw outputs of a batch into per-image detections (sorted by score), in original pixels."""
        boxes_all, kps_all, scores_all = [], [], []
        for s in STRIDES:
            grid = self._grids[s]  # (A, 2)
            cls = np.clip(outputs[f"cls_{s}"][..., 0], 0, 1)
            obj = np.clip(outputs[f"obj_{s}"][..., 0], 0, 1)
            scores_all.append(np.sqrt(cls * obj))  # (N, A)
            bbox = outputs[f"bbox_{s}"]  # (N, A, 4): centre offsets in cells, log-size in cells
            centre = (grid[None] + bbox[..., :2]) * s
            wh = np.exp(bbox[..., 2:4]) * s
            boxes_all.append(np.concatenate([centre - wh / 2, centre + wh / 2], axis=-1))
            kps = outputs[f"kps_{s}"].reshape(*bbox.shape[:2], 5, 2)
            kps_all.append((kps + grid[None, :, None, :]) * s)
        scores = np.concatenate(scores_all, axis=1)
        boxes = np.concatenate(boxes_all, axis=1)
        kpss = np.concatenate(kps_all, axis=1)
        results: list[list[Detection]] = []
        for i, (h, w) in enumerate(sizes):
            keep = np.flatnonzero(scores[i] >= self.score_threshold)
            dets: list[Detection] = []
            if keep.size:
                b = boxes[i, keep] / scales[i]
                k = kpss[i, keep] / scales[i]
                sc = scores[i, keep]
                xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
                idx = cv2.dnn.NMSBoxes(xywh.tolist(), sc.tolist(), self.score_threshold, self.nms_threshold,
                                       top_k=self.top_k)
                for j in np.asarray(idx, dtype=np.int64).reshape(-1):
                    box = b[j].copy()
                    box[[0, 2]] = np.clip(box[[0, 2]], 0, w)
                    box[[1, 3]] = np.clip(box[[1, 3]], 0, h)
                    if min(box[2] - box[0], box[3] - box[1]) < self.min_face_px:
                        continue
                    dets.append(Detection(box.astype(np.float32), k[j].astype(np.float32), float(sc[j])))
            results.append(dets)
        return results


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
