"""The built landmarker (FaceMesh): the PRelu rewrite changes nothing in its outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from server.modelrepo import landmarker
from server.modelrepo.sources import fetch_source

from .conftest import model_path, session


def test_landmarker_prelu_rewrite_is_exact(repo: Path, cache_dir: Path) -> None:
    plain = landmarker.convert(fetch_source(cache_dir, landmarker.SOURCE), rewrite_prelu=False)
    assert any(n.op_type == "PRelu" for n in onnx.load_from_string(plain).graph.node)
    built = onnx.load(str(model_path(repo, "landmarker")))
    assert not any(n.op_type == "PRelu" for n in built.graph.node)
    crops = np.random.default_rng(7).uniform(0, 1, (4, 3, 192, 192)).astype(np.float32)
    ref = ort.InferenceSession(plain, providers=["CPUExecutionProvider"]).run(None, {"input": crops})
    ours = session(model_path(repo, "landmarker")).run(None, {"input": crops})
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
