"""A fixed linear map from the 468 FaceMesh points to the 68 iBUG points (jaw, brows, nose, eyes, mouth).

Each iBUG contour is resampled along a FaceMesh contour chain, so the 68 points are weighted sums of mesh points
and the whole mapping is one ``(68, 468)`` matrix applied to a batch at once. Chains run image-left to
image-right for a frontal face, which is iBUG's order (point 0 is on the subject's right).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# FaceMesh contour chains (vertex indices of the canonical mesh topology).
_JAW_RIGHT = (127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152)  # temple (image-left) -> chin
_JAW_LEFT = (152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 454, 356)  # chin -> temple (image-right)
_BROW_RIGHT_UPPER = (70, 63, 105, 66, 107)  # outer -> inner
_BROW_RIGHT_LOWER = (46, 53, 52, 65, 55)
_BROW_LEFT_UPPER = (336, 296, 334, 293, 300)  # inner -> outer
_BROW_LEFT_LOWER = (285, 295, 282, 283, 276)
_NOSE_BRIDGE = (168, 197, 5, 4)  # 27..30, 30 is the tip
_NOSE_BASE = (98, 97, 2, 326, 327)  # 31..35
_RIGHT_EYE = (33, 160, 158, 133, 153, 144)  # 36..41: outer corner, upper lid, inner corner, lower lid
_LEFT_EYE = (362, 385, 387, 263, 373, 380)  # 42..47: inner corner, upper lid, outer corner, lower lid
_LIP_OUTER_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)  # right corner -> left corner
_LIP_OUTER_LOWER = (291, 375, 321, 405, 314, 17, 84, 181, 91, 146, 61)  # left corner -> right corner
_LIP_INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
_LIP_INNER_LOWER = (308, 324, 318, 402, 317, 14, 87, 178, 88, 95, 78)


def _resample(chain: tuple[int, ...], n: int) -> list[dict[int, float]]:
    """``n`` points evenly spaced (by vertex parameter) along ``chain``, endpoints included."""
    rows: list[dict[int, float]] = []
    for t in np.linspace(0.0, len(chain) - 1, n):
        lo = int(np.floor(t))
        frac = float(t - lo)
        if frac < 1e-9 or lo + 1 >= len(chain):
            rows.append({chain[min(lo, len(chain) - 1)]: 1.0})
        else:
            rows.append({chain[lo]: 1.0 - frac, chain[lo + 1]: frac})
    return rows


def _mean(*idx: int) -> dict[int, float]:
    return {i: 1.0 / len(idx) for i in idx}


def _build() -> npt.NDArray[np.float32]:
    rows: list[dict[int, float]] = []
    rows += _resample(_JAW_RIGHT, 9)  # 0..8 (8 = chin)
    rows += _resample(_JAW_LEFT, 9)[1:]  # 9..16
    # iBUG brow points follow the brow's middle line, between its upper and lower mesh edges.
    rows += [_mean(u, lo) for u, lo in zip(_BROW_RIGHT_UPPER, _BROW_RIGHT_LOWER, strict=True)]  # 17..21
    rows += [_mean(u, lo) for u, lo in zip(_BROW_LEFT_UPPER, _BROW_LEFT_LOWER, strict=True)]  # 22..26
    rows += [{i: 1.0} for i in _NOSE_BRIDGE]  # 27..30
    rows += [{i: 1.0} for i in _NOSE_BASE]  # 31..35
    rows += [{i: 1.0} for i in _RIGHT_EYE]  # 36..41
    rows += [{i: 1.0} for i in _LEFT_EYE]  # 42..47
    rows += _resample(_LIP_OUTER_UPPER, 7)  # 48..54
    rows += _resample(_LIP_OUTER_LOWER, 7)[1:-1]  # 55..59
    rows += _resample(_LIP_INNER_UPPER, 5)  # 60..64
    rows += _resample(_LIP_INNER_LOWER, 5)[1:-1]  # 65..67
    w = np.zeros((68, 468), dtype=np.float32)
    for r, weights in enumerate(rows):
        for i, v in weights.items():
            w[r, i] = v
    return w


MESH_TO_68: npt.NDArray[np.float32] = _build()


def _sparse(w: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    """The matrix as ``(68, K)`` mesh indices and weights (K = the most mesh points one iBUG point uses; unused
    slots weigh 0 on point 0)."""
    rows, cols = np.nonzero(w)
    k = int(np.bincount(rows).max())
    idx, weights = np.zeros((len(w), k), dtype=np.intp), np.zeros((len(w), k), dtype=np.float32)
    used = np.zeros(len(w), dtype=np.intp)
    for r, c in zip(rows, cols, strict=True):
        idx[r, used[r]], weights[r, used[r]] = c, w[r, c]
        used[r] += 1
    return idx, weights


# Each iBUG point uses at most two mesh points: gathering them is exact (the same products and sum as the dense
# product, whose other terms are zeros) and about 30x cheaper than a dense (68, 468) product per face.
_INDEX, _WEIGHTS = _sparse(MESH_TO_68)


def mesh_to_68(mesh: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``(M, 468, D)`` mesh -> ``(M, 68, D)`` iBUG points."""
    out: npt.NDArray[np.float32] = (mesh[:, _INDEX] * _WEIGHTS[None, :, :, None]).sum(axis=2, dtype=np.float32)
    return out
