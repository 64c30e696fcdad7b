"""The built detector (YuNet): batch and input size dynamic, equal to the original file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from server.modelrepo import detector
from server.modelrepo.sources import fetch_source

from .conftest import model_path, session, smooth_images


def test_detector_batch_equals_singles(repo: Path) -> None:
    sess = session(model_path(repo, "detector"))
    images = smooth_images(2, 640, 640, seed=3)
    together = sess.run(None, {"input": images})
    for i in range(2):
        alone = sess.run(None, {"input": images[i : i + 1]})
        for a, b in zip(together, alone, strict=True):
            np.testing.assert_allclose(a[i : i + 1], b, rtol=1e-4, atol=1e-4)
    # Different images must give different outputs, or the check above proves nothing.
    assert not np.allclose(together[0][0], together[0][1])


@pytest.mark.parametrize(("h", "w"), [(320, 320), (480, 640), (640, 480)])
def test_detector_input_size_is_dynamic(repo: Path, h: int, w: int) -> None:
    sess = session(model_path(repo, "detector"))
    outs = sess.run(None, {"input": smooth_images(2, h, w, seed=4)})
    for out, value in zip(sess.get_outputs(), outs, strict=True):
        stride = int(out.name.rsplit("_", 1)[1])
        assert value.shape[:2] == (2, (h // stride) * (w // stride))


def test_detector_matches_original(repo: Path, cache_dir: Path) -> None:
    original = ort.InferenceSession(fetch_source(cache_dir, detector.SOURCE), providers=["CPUExecutionProvider"])
    image = smooth_images(1, 640, 640, seed=5)
    for a, b in zip(session(model_path(repo, "detector")).run(None, {"input": image}),
                    original.run(None, {"input": image}), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
