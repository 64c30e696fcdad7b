"""Static int8 quantization (QDQ form) of Conv and Gemm nodes from a committed table of activation ranges.

The ranges are measured once, offline, by ``python -m bench.calibrate`` and committed as JSON; the build only
applies them, so it needs no images and gives the same bytes on every run (numpy and onnx only, no
onnxruntime quantization tool whose output changes between releases).

Form: activations uint8 with a zero point (per tensor), weights symmetric per output channel in 7 bits
(-63..63, stored as int8; see ``WEIGHT_BITS``), biases int32 at scale ``input_scale * weight_scale``. Each
quantized node reads ``DequantizeLinear`` outputs and its result passes ``QuantizeLinear -> DequantizeLinear``;
onnxruntime fuses every such group into ``QLinearConv`` / ``QGemm`` (u8s8 kernels), while ops left in float
between them simply see the dequantized tensor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from server.errors import ModelBuildError
from server.modelrepo import graph as g

if TYPE_CHECKING:
    import onnx

QUANTIZED_OPS = ("Conv", "Gemm")
TABLE_FORMAT = 1
# Weights use 7 bits (|q| <= 63), not the full int8 range. onnxruntime's x86 u8s8 kernels on CPUs without VNNI
# (AVX2 only) add pairs of u8*s8 products in 16 bits with saturation: 255*127*2 overflows int16, 255*63*2 = 32130
# does not. With 7-bit weights those kernels are exact, so the fused graph computes what the QDQ graph says on
# every x86 CPU (tests/unit/modelrepo/test_quantize.py) and one file serves VNNI and AVX2 alike; the cost is one
# bit of weight resolution (README "Precision" for what that does to the embedder's accuracy).
WEIGHT_BITS = 7


@dataclass(frozen=True, slots=True)
class CalibrationTable:
    """Activation ranges ``(low, high)`` per tensor name, measured on real inputs of one source model."""

    model: str
    source_sha256: str
    method: str
    samples: int
    ranges: dict[str, tuple[float, float]]

    def to_json(self) -> str:
        """JSON with one range per line (floats written exactly, so a reload gives the same bytes)."""
        head = {"format": TABLE_FORMAT, "model": self.model, "source_sha256": self.source_sha256,
                "method": self.method, "samples": self.samples}
        lines = [f"  {json.dumps(k)}: {json.dumps([float(lo), float(hi)])}"
                 for k, (lo, hi) in sorted(self.ranges.items())]
        fields = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in head.items()]
        return "{\n" + ",\n".join([*fields, ' "ranges": {\n' + ",\n".join(lines) + "\n }"]) + "\n}\n"

    @classmethod
    def from_json(cls, text: str) -> CalibrationTable:
        try:
            body = json.loads(text)
            if body["format"] != TABLE_FORMAT:
                raise ValueError(f"format {body['format']!r}, expected {TABLE_FORMAT}")
            ranges = {str(k): (float(v[0]), float(v[1])) for k, v in body["ranges"].items()}
            table = cls(str(body["model"]), str(body["source_sha256"]), str(body["method"]), int(body["samples"]),
                        ranges)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ModelBuildError(f"calibration table is malformed: {exc}") from exc
        for name, (lo, hi) in ranges.items():
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ModelBuildError(f"calibration table: bad range for {name}: {lo}..{hi}")
        return table

    @classmethod
    def load(cls, path: Path) -> CalibrationTable:
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ModelBuildError(f"cannot read the calibration table {path}: {exc.strerror}") from exc


def activation_params(low: float, high: float) -> tuple[np.float32, np.uint8]:
    """uint8 scale and zero point covering ``low..high`` (widened to include 0, which stays exact)."""
    lo, hi = min(float(low), 0.0), max(float(high), 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero = int(np.clip(np.round(-lo / scale), 0, 255))
    return np.float32(scale), np.uint8(zero)


def weight_params(w: npt.NDArray[np.float32], bits: int = WEIGHT_BITS,
                  ) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """Symmetric per output channel (axis 0) in ``bits`` bits (-(2**(bits-1)-1)..2**(bits-1)-1, stored as int8):
    the quantized weights and their float32 scales."""
    if not 2 <= bits <= 8:
        raise ValueError(f"weight bits must be 2..8, not {bits}")
    top = 2 ** (bits - 1) - 1
    peak = np.abs(w.astype(np.float64)).reshape(w.shape[0], -1).max(axis=1)
    scale = np.where(peak > 0, peak / top, 1.0).astype(np.float32)
    q = np.clip(np.round(w / scale.reshape([-1] + [1] * (w.ndim - 1))), -top, top).astype(np.int8)
    return q, scale


def quantizable_nodes(model: onnx.ModelProto, exclude: Collection[str] = ()) -> list[int]:
    """Positions of the Conv and Gemm nodes (with constant weights) that get quantized, in graph order."""
    inits = g.initializers(model.graph)
    return [i for i, n in enumerate(model.graph.node)
            if n.op_type in QUANTIZED_OPS and n.name not in exclude and n.input[1] in inits]


def calibration_tensors(model: onnx.ModelProto, exclude: Collection[str] = (),
                        float_outputs: Collection[str] = ()) -> list[str]:
    """Names of the activations whose ranges the table must hold (inputs and quantized outputs)."""
    names: list[str] = []
    for i in quantizable_nodes(model, exclude):
        n = model.graph.node[i]
        names.append(n.input[0])
        if n.name not in float_outputs:
            names.append(n.output[0])
    return list(dict.fromkeys(names))


def quantize_qdq(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]], *,
                 exclude: Collection[str] = (), float_outputs: Collection[str] = (),
                 weight_bits: int = WEIGHT_BITS) -> int:
    """Quantize the Conv/Gemm nodes of ``model`` in place; returns how many were quantized.

    ``exclude`` names nodes left in float; ``float_outputs`` names nodes whose output is not re-quantized
    (the last layer, so the embedding keeps full resolution); ``weight_bits`` see ``WEIGHT_BITS``.
    """
    onnx = g.onnx_module()
    nh, helper = onnx.numpy_helper, onnx.helper
    graph = model.graph
    inits = g.initializers(graph)
    targets = set(quantizable_nodes(model, exclude))
    missing = [t for t in calibration_tensors(model, exclude, float_outputs) if t not in ranges]
    if missing:
        raise ModelBuildError(f"calibration table lacks ranges for {missing[:5]} (re-run bench.calibrate)")
    added: list[Any] = []
    dequantized: dict[str, tuple[str, np.float32]] = {}  # tensor -> (its dequantized name, scale)
    nodes: list[Any] = []

    def qparams(tensor: str) -> tuple[str, str, np.float32]:
        scale, zero = activation_params(*ranges[tensor])
        added.extend([nh.from_array(np.array(scale, np.float32), f"{tensor}/scale"),
                      nh.from_array(np.array(zero, np.uint8), f"{tensor}/zero_point")])
        return f"{tensor}/scale", f"{tensor}/zero_point", scale

    for index, node in enumerate(graph.node):
        if index not in targets:
            nodes.append(node)
            continue
        x = node.input[0]
        if x not in dequantized:
            s, z, scale = qparams(x)
            nodes += [helper.make_node("QuantizeLinear", [x, s, z], [f"{x}/quantized"], name=f"{x}/quantize"),
                      helper.make_node("DequantizeLinear", [f"{x}/quantized", s, z], [f"{x}/dequantized"],
                                       name=f"{x}/dequantize")]
            dequantized[x] = (f"{x}/dequantized", scale)
        x_dq, x_scale = dequantized[x]
        base = node.name or node.output[0]
        w_q, w_scale = weight_params(nh.to_array(inits[node.input[1]]).astype(np.float32), weight_bits)
        added += [nh.from_array(w_q, f"{base}/weight_quantized"), nh.from_array(w_scale, f"{base}/weight_scale"),
                  nh.from_array(np.zeros(len(w_scale), np.int8), f"{base}/weight_zero_point")]
        nodes.append(helper.make_node(
            "DequantizeLinear", [f"{base}/weight_quantized", f"{base}/weight_scale", f"{base}/weight_zero_point"],
            [f"{base}/weight"], name=f"{base}/weight_dequantize", axis=0))
        inputs = [x_dq, f"{base}/weight"]
        if len(node.input) > 2 and node.input[2]:
            # int32 at exactly input_scale * weight_scale (float32 product), as QLinearConv's bias must be.
            b_scale = (np.float32(x_scale) * w_scale).astype(np.float32)
            b = nh.to_array(inits[node.input[2]]).astype(np.float64)
            b_q = np.clip(np.round(b / b_scale), -(2**31), 2**31 - 1).astype(np.int32)
            added += [nh.from_array(b_q, f"{base}/bias_quantized"), nh.from_array(b_scale, f"{base}/bias_scale"),
                      nh.from_array(np.zeros(len(b_scale), np.int32), f"{base}/bias_zero_point")]
            nodes.append(helper.make_node(
                "DequantizeLinear", [f"{base}/bias_quantized", f"{base}/bias_scale", f"{base}/bias_zero_point"],
                [f"{base}/bias"], name=f"{base}/bias_dequantize", axis=0))
            inputs.append(f"{base}/bias")
        node.input[:] = inputs
        nodes.append(node)
        if node.name not in float_outputs:
            y = node.output[0]
            node.output[0] = f"{y}/float"
            s, z, scale = qparams(y)
            nodes += [helper.make_node("QuantizeLinear", [f"{y}/float", s, z], [f"{y}/quantized"],
                                       name=f"{y}/quantize"),
                      helper.make_node("DequantizeLinear", [f"{y}/quantized", s, z], [y], name=f"{y}/dequantize")]
            dequantized[y] = (y, scale)  # already dequantized: a quantized reader takes it as is
    del graph.node[:]
    graph.node.extend(nodes)
    g.replace_initializers(graph, [*graph.initializer, *added])
    g.drop_unused_initializers(graph)
    return len(targets)
