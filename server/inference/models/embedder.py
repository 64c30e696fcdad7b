"""SFace embedder: 5-point similarity alignment to the ArcFace 112x112 template, batched, and L2-normalised output."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from server.inference.backend import ModelSpec

SIZE = 112
# The standard ArcFace template (image-left eye, image-right eye, nose tip, image-left and image-right mouth corner).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def similarity_transform(src: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Least-squares rotation+scale+translation mapping 5 points onto the template (Umeyama, closed form).

    Closed form rather than a robust (LMEDS) estimate: with exactly five well-localised points there are no
    outliers to reject, and the closed form is deterministic, so identical inputs give identical crops.
    """
    dst = ARCFACE_TEMPLATE.astype(np.float64)
    s = src.astype(np.float64)
    mu_s, mu_d = s.mean(0), dst.mean(0)
    sc, dc = s - mu_s, dst - mu_d
    var = (sc**2).sum() / len(s)
    cov = dc.T @ sc / len(s)
    u, sig, vt = np.linalg.svd(cov)
    d = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1, 1] = -1
    r = u @ d @ vt
    scale = float((sig * np.diag(d)).sum() / max(var, 1e-12))
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]])


class Embedder:
    """Pre/post-processing around SFace."""

    name = "embedder"

    def __init__(self, spec: ModelSpec) -> None:
        self.input_name = spec.inputs[0].name
        self.output_name = spec.outputs[0].name

    @staticmethod
    def align(images: list[npt.NDArray[np.uint8]], image_index: npt.NDArray[np.intp],
              points5: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
        """Aligned RGB crops ``(M, 112, 112, 3)`` from 5 points per face ``(M, 5, 2)`` (the images: RGB, or RGBA
        with the same RGB)."""
        channels = images[int(image_index[0])].shape[2] if len(image_index) else 3
        out = np.empty((len(points5), SIZE, SIZE, channels), dtype=np.uint8)
        for m, (i, pts) in enumerate(zip(image_index, points5, strict=True)):
            cv2.warpAffine(images[i], similarity_transform(pts), (SIZE, SIZE), dst=out[m],
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        return out if channels == 3 else np.ascontiguousarray(out[..., :3])

    @staticmethod
    def preprocess(crops: npt.NDArray[np.uint8], *, flip: bool = False) -> npt.NDArray[np.float32]:
        """``(M, 112, 112, 3)`` RGB crops -> ``(M, 3, 112, 112)`` float RGB 0..255 (SFace scales inside its graph).

        With ``flip`` the mirrored crops are appended after the originals, giving ``(2M, ...)``.
        """
        m = len(crops)
        x = np.empty((2 * m if flip else m, 3, SIZE, SIZE), dtype=np.float32)
        planar = crops.transpose(0, 3, 1, 2)
        x[:m] = planar
        if flip:
            x[m:] = planar[..., ::-1]
        return x

    def postprocess(self, outputs: dict[str, npt.NDArray[np.float32]], *, flip: bool = False
                    ) -> npt.NDArray[np.float32]:
        """L2-normalised embeddings ``(M, 128)``; with ``flip`` the original and mirrored embeddings are summed."""
        e = outputs[self.output_name].reshape(len(outputs[self.output_name]), -1).astype(np.float32)
        if flip:
            half = len(e) // 2
            e = e[:half] / np.linalg.norm(e[:half], axis=1, keepdims=True) + e[half:] / np.linalg.norm(
                e[half:], axis=1, keepdims=True)
        out: npt.NDArray[np.float32] = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        return out
