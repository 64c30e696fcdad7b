"""Numerical checks run on every built file with onnxruntime (CPU) before it is written."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from server.errors import ModelBuildError


def session(model: bytes, *, threads: int = 2) -> Any:
    """A CPU onnxruntime session on a serialised model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the original SFace file warns once per stale input
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def assert_close(a: npt.NDArray[Any], b: npt.NDArray[Any], what: str, tol: float = 1e-4) -> None:
    if a.shape != b.shape or not np.allclose(a, b, rtol=tol, atol=tol):
        diff = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("nan")
        raise ModelBuildError(
            f"verification failed: {what} (shapes {a.shape} vs {b.shape}, max |diff| {diff:.3g})"
        )


def check_batch(sess: Any, name: str, batch: npt.NDArray[np.float32], what: str, tol: float = 1e-4) -> None:
    """Every item of ``batch`` gives the same outputs in the batch as alone."""
    together = sess.run(None, {name: batch})
    for i in range(batch.shape[0]):
        alone = sess.run(None, {name: batch[i : i + 1]})
        for out, a, b in zip(sess.get_outputs(), together, alone, strict=True):
            assert_close(a[i : i + 1], b, f"{what}: {out.name} of item {i} in a batch vs alone", tol)


def cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Row-wise cosine similarity of two ``(N, D)`` arrays."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    out: npt.NDArray[np.float64] = (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
    return out
