"""ONNX graph edits shared by the model converters: shapes, initializers, PRelu, BatchNorm folding, the final check."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from server.errors import ModelBuildError
from server.inference.backend import ModelSpec, TensorSpec
from server.modelrepo.sources import SourceModel

if TYPE_CHECKING:
    import onnx
    from onnx import NodeProto


def onnx_module() -> Any:
    """The ``onnx`` package (a build extra), or a ModelBuildError saying how to install it."""
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelBuildError("building models needs the build extras: pip install 'facerec[build]'") from exc
    return onnx


def set_dims(value_info: onnx.ValueInfoProto, dims: Iterable[int | str]) -> None:
    shape = value_info.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


def dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def replace_initializers(graph: onnx.GraphProto, tensors: Iterable[onnx.TensorProto]) -> None:
    # Sorted by name: converters emit them in run-dependent order, and sorting makes the bytes reproducible.
    kept = sorted(tensors, key=lambda t: t.name)
    del graph.initializer[:]
    graph.initializer.extend(kept)


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove initializers nothing reads, and their entries in the graph inputs (some converters list them)."""
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    dropped = {t.name for t in graph.initializer if t.name not in used}
    replace_initializers(graph, [t for t in graph.initializer if t.name in used])
    if any(i.name in dropped for i in graph.input):
        inputs = [i for i in graph.input if i.name not in dropped]
        del graph.input[:]
        graph.input.extend(inputs)


def rewrite_prelu(graph: onnx.GraphProto, *, exact: bool = True) -> int:
    """Replace each ``PRelu(x, a)`` by cheaper element-wise ops; returns how many were rewritten.

    onnxruntime's CPU PRelu kernel is slow. ``exact`` gives ``Relu(x) + a * Min(x, 0)``, bit-identical (for
    x > 0 it adds a*0, else 0 + a*x). Otherwise ``x + (a - 1) * Min(x, 0)``: one op fewer, equal up to one
    rounding of the product, which is far below int8 resolution (used by the quantized embedder, where these
    element-wise passes between the int8 convolutions are most of the remaining time).
    PRelu broadcasts the slope to x unidirectionally and Mul broadcasts numpy-style, both right-aligned,
    so the slope initializer keeps its shape ([C,1,1] or [1,C,1,1] in these graphs).
    """
    onnx = onnx_module()
    zero = "facerec_prelu_zero"
    inits = initializers(graph)
    extra: dict[str, Any] = {}
    nodes: list[NodeProto] = []
    count = 0
    for node in graph.node:
        if node.op_type != "PRelu":
            nodes.append(node)
            continue
        x, slope = node.input
        out = node.output[0]
        base = node.name or out
        neg = onnx.helper.make_node("Min", [x, zero], [f"{base}/neg"], name=f"{base}/min")
        if exact:
            nodes += [
                onnx.helper.make_node("Relu", [x], [f"{base}/pos"], name=f"{base}/relu"),
                neg,
                onnx.helper.make_node("Mul", [slope, f"{base}/neg"], [f"{base}/scaled"], name=f"{base}/mul"),
                onnx.helper.make_node("Add", [f"{base}/pos", f"{base}/scaled"], [out], name=f"{base}/add"),
            ]
        else:
            a = onnx.numpy_helper.to_array(inits[slope]).astype(np.float32)
            extra[slope] = onnx.numpy_helper.from_array((a - np.float32(1)).astype(np.float32), f"{slope}_minus_1")
            nodes += [
                neg,
                onnx.helper.make_node("Mul", [f"{slope}_minus_1", f"{base}/neg"], [f"{base}/scaled"],
                                      name=f"{base}/mul"),
                onnx.helper.make_node("Add", [x, f"{base}/scaled"], [out], name=f"{base}/add"),
            ]
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        zero_t = onnx.numpy_helper.from_array(np.zeros((), np.float32), zero)
        replace_initializers(graph, [*graph.initializer, *extra.values(), zero_t])
    return count


def fold_batchnorm(graph: onnx.GraphProto) -> int:
    """Fold each BatchNormalization that directly follows a Conv or Gemm into that node's weights and bias.

    onnxruntime does this itself when it loads an fp32 model; a quantized model needs it done beforehand so
    the int8 weights carry the scale (a BatchNorm between int8 ops would run in float). The folded node takes
    over the BatchNorm's output name. Arithmetic in float64, rounded once to float32. Returns the count.
    """
    onnx = onnx_module()
    nh = onnx.numpy_helper
    inits = initializers(graph)
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, int] = {}
    for n in graph.node:
        for x in n.input:
            readers[x] = readers.get(x, 0) + 1
    removed: set[int] = set()  # node positions (protobuf wrappers have no stable identity)
    added: list[Any] = []
    for index, bn in enumerate(graph.node):
        if bn.op_type != "BatchNormalization":
            continue
        prev = producer.get(bn.input[0])
        if prev is None or prev.op_type not in ("Conv", "Gemm") or readers.get(prev.output[0], 0) != 1:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in prev.attribute}
        if prev.op_type == "Gemm" and (attrs.get("transB") != 1 or attrs.get("transA", 0) != 0
                                       or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            continue
        eps = next((float(onnx.helper.get_attribute_value(a)) for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (nh.to_array(inits[x]).astype(np.float64) for x in bn.input[1:])
        scale = gamma / np.sqrt(var + eps)
        w = nh.to_array(inits[prev.input[1]]).astype(np.float64)
        b = nh.to_array(inits[prev.input[2]]).astype(np.float64) if len(prev.input) > 2 else np.zeros(w.shape[0])
        w_folded = w * scale.reshape([-1] + [1] * (w.ndim - 1))  # output channels are axis 0 (Gemm: transB)
        b_folded = (b - mean) * scale + beta
        name = prev.name or prev.output[0]
        added += [nh.from_array(w_folded.astype(np.float32), f"{name}/weight_folded"),
                  nh.from_array(b_folded.astype(np.float32), f"{name}/bias_folded")]
        prev.input[:] = [prev.input[0], f"{name}/weight_folded", f"{name}/bias_folded"]
        prev.output[0] = bn.output[0]
        removed.add(index)
    if removed:
        kept = [n for i, n in enumerate(graph.node) if i not in removed]
        del graph.node[:]
        graph.node.extend(kept)
        replace_initializers(graph, [*graph.initializer, *added])
        drop_unused_initializers(graph)
    return len(removed)


def tensor_specs(values: Iterable[onnx.ValueInfoProto]) -> tuple[TensorSpec, ...]:
    onnx = onnx_module()
    specs = []
    for v in values:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)).name
        shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in dims(v)[1:])
        specs.append(TensorSpec(v.name, dtype, shape))
    return tuple(specs)


def onnx_io(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs of an ONNX model as TensorSpecs (batch axis dropped, dynamic dims = -1)."""
    inits = {t.name for t in model.graph.initializer}
    return tensor_specs(i for i in model.graph.input if i.name not in inits), tensor_specs(model.graph.output)


def check_io(model: onnx.ModelProto, spec: ModelSpec) -> None:
    inputs, outputs = onnx_io(model)
    if (inputs, outputs) != (spec.inputs, spec.outputs):
        raise ModelBuildError(
            f"{spec.name}: converted model I/O {inputs} -> {outputs} differs from the declared {spec}"
        )
    for v in [*model.graph.input, *model.graph.output]:
        if dims(v)[0] != "N":
            raise ModelBuildError(f"{spec.name}: {v.name} has a static batch axis")


def finish(model: onnx.ModelProto, source: SourceModel, spec: ModelSpec,
           metadata: Mapping[str, str] | None = None) -> bytes:
    """Drop stale shape annotations, record the source, validate, check the declared I/O and serialise."""
    onnx = onnx_module()
    graph = model.graph
    # Converter-recorded intermediate shapes are static (batch 1); onnxruntime re-infers them.
    del graph.value_info[:]
    inits = initializers(graph)
    real_inputs = [i for i in graph.input if i.name not in inits]
    del graph.input[:]
    graph.input.extend(real_inputs)
    drop_unused_initializers(graph)
    del model.metadata_props[:]
    props = {"facerec.source": f"{source.requirement}:{source.member}", "facerec.source_sha256": source.sha256}
    for key, value in {**props, **(metadata or {})}.items():
        model.metadata_props.add(key=key, value=value)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelBuildError(f"{spec.name}: converted model fails the ONNX checker: {exc}") from exc
    check_io(model, spec)
    data: bytes = model.SerializeToString()
    return data
