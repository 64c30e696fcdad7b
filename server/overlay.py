"""Draws detected boxes and the 68 landmarks of compared faces side by side, for a check at a glance."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from server.domain import FaceAnalysis

# One colour per iBUG group so a swapped group is obvious: jaw, brows, nose, eyes, mouth.
_GROUPS = ((0, 17, (255, 200, 0)), (17, 27, (0, 200, 255)), (27, 36, (255, 0, 255)), (36, 48, (0, 255, 0)),
           (48, 68, (255, 60, 60)))


def draw_overlay(images: list[npt.NDArray[np.uint8]], faces: list[FaceAnalysis], out: Path, *,
                 caption: str = "", height: int = 480) -> None:
    """Write a PNG with each RGB image scaled to ``height``, its box and points drawn, placed side by side."""
    panels = []
    for img, f in zip(images, faces, strict=True):
        k = height / img.shape[0]
        panel = cv2.resize(img, (max(1, round(img.shape[1] * k)), height), interpolation=cv2.INTER_AREA).copy()
        cv2.rectangle(panel, (round(f.x1 * k), round(f.y1 * k)), (round(f.x2 * k), round(f.y2 * k)),
                      (255, 255, 255), 2)
        for lo, hi, colour in _GROUPS:
            for p in f.landmark_68[lo:hi]:
                cv2.circle(panel, (round(p.x * k), round(p.y * k)), 2, colour, -1, cv2.LINE_AA)
        label = f"q={f.face_quality:.2f} yaw={f.yaw:.0f} pitch={f.pitch:.0f} roll={f.roll:.0f}"
        cv2.putText(panel, label, (6, height - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1, cv2.LINE_AA)
        panels.append(panel)
    canvas = np.concatenate(panels, axis=1)
    if caption:
        bar = np.zeros((32, canvas.shape[1], 3), dtype=np.uint8)
        cv2.putText(bar, caption, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.65, (255, 255, 255), 1, cv2.LINE_AA)
        canvas = np.concatenate([bar, canvas], axis=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), canvas[:, :, ::-1]):
        raise OSError(f"cannot write {out}")
