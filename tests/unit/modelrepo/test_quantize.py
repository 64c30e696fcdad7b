"""Static int8 quantization from a calibration table: parameters, the table file, the QDQ graph onnxruntime fuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from server.errors import ModelBuildError
from server.modelrepo.quantize import (
    WEIGHT_BITS,
    CalibrationTable,
    activation_params,
    calibration_tensors,
    quantize_qdq,
    weight_params,
)


@pytest.mark.parametrize(("lo", "hi"), [(-3.0, 5.0), (0.5, 4.0), (-2.0, -0.25), (-1e-3, 7.9)])
def test_activation_params_cover_the_range_and_keep_zero_exact(lo: float, hi: float) -> None:
    scale, zero = activation_params(lo, hi)
    assert scale.dtype == np.float32 and zero.dtype == np.uint8
    # 0 is a representable value (a zero point in 0..255), and the ends of the range are reachable.
    assert (0 - int(zero)) * scale <= min(lo, 0.0) + scale / 2
    assert (255 - int(zero)) * scale >= max(hi, 0.0) - scale / 2


def test_activation_params_of_an_empty_range() -> None:
    assert activation_params(0.0, 0.0) == (np.float32(1.0), np.uint8(0))


@pytest.mark.parametrize(("bits", "top"), [(8, 127), (7, 63)])
def test_weight_params_are_symmetric_per_output_channel(bits: int, top: int) -> None:
    w = np.random.default_rng(1).normal(size=(4, 3, 3, 3)).astype(np.float32)
    w[2] = 0.0
    q, scale = weight_params(w, bits)
    assert q.dtype == np.int8 and scale.shape == (4,)
    assert [int(np.abs(q[c]).max()) for c in range(4)] == [top, top, 0, top]
    np.testing.assert_allclose(q * scale[:, None, None, None], w, atol=float(scale.max()) / 2 + 1e-7)


def test_weights_default_to_7_bits() -> None:
    # |q| <= 63 keeps 255*63*2 within int16, where onnxruntime's AVX2 u8s8 kernels sum pairs of products.
    assert WEIGHT_BITS == 7
    q, _ = weight_params(np.random.default_rng(5).normal(size=(16, 8, 1, 1)).astype(np.float32))
    assert int(np.abs(q.astype(np.int32)).max()) == 63
    with pytest.raises(ValueError, match="weight bits"):
        weight_params(np.ones((1, 1), np.float32), 9)


def _table() -> CalibrationTable:
    return CalibrationTable("m", "ab" * 32, "test ranges", 3, {"x": (-1.5, 2.25), "y": (0.0, 1e-7)})


def test_table_json_round_trips_exactly(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(_table().to_json())
    assert CalibrationTable.load(path) == _table()
    assert CalibrationTable.load(path).to_json() == path.read_text()


@pytest.mark.parametrize("text", ["{", '{"format": 2}', '{"format": 1, "model": "m"}',
                                  _table().to_json().replace("-1.5", "NaN"), _table().to_json().replace("-1.5", "3.0")])
def test_bad_tables_are_refused(text: str) -> None:
    with pytest.raises(ModelBuildError, match="calibration table"):
        CalibrationTable.from_json(text)


def test_missing_table_file_is_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(ModelBuildError, match="cannot read the calibration table"):
        CalibrationTable.load(tmp_path / "absent.json")


def _two_convs() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    nh = onnx.numpy_helper
    inits = [nh.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
             nh.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
             nh.from_array(rng.normal(0, 0.2, (8, 8, 1, 1)).astype(np.float32), "w2"),
             nh.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b2")]
    nodes = [onnx.helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             onnx.helper.make_node("Relu", ["c1"], ["r1"]),
             onnx.helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2")]
    graph = onnx.helper.make_graph(
        nodes, "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 16, 16])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 8, 16, 16])], inits)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21)], ir_version=10)


def _session(model: onnx.ModelProto, *, optimize: bool, save_to: Path | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if save_to is not None:
        opts.optimized_model_filepath = str(save_to)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _ranges(model: onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, dict[str, tuple[float, float]]]:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in ("c1", "r1"))
    y, c1, r1 = _session(probe, optimize=False).run(None, {"x": x})
    return y, {name: (float(v.min()), float(v.max())) for name, v in (("x", x), ("c1", c1), ("r1", r1), ("y", y))}


def test_quantized_graph_is_fused_into_int8_kernels_and_stays_close(tmp_path: Path) -> None:
    model = _two_convs()
    x = np.random.default_rng(3).uniform(-1, 1, (4, 3, 16, 16)).astype(np.float32)
    assert calibration_tensors(model) == ["x", "c1", "r1", "y"]
    want, ranges = _ranges(model, x)
    assert quantize_qdq(model, ranges) == 2
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 4 and ops.count("Conv") == 2
    (emulated,) = _session(model, optimize=False).run(None, {"x": x})
    fused_path = tmp_path / "fused.onnx"
    (fused,) = _session(model, optimize=True, save_to=fused_path).run(None, {"x": x})
    fused_ops = [n.op_type for n in onnx.load(str(fused_path)).graph.node]
    assert fused_ops.count("QLinearConv") == 2 and "Conv" not in fused_ops, fused_ops
    # int8 error stays a small fraction of the signal, and the fused kernels compute what the QDQ graph says, on
    # VNNI and on AVX2 alike: with 7-bit weights the AVX2 kernels' 16-bit pair sums cannot saturate (with 8-bit
    # weights a third of these outputs were off by more than the tolerance, by up to 0.48, on this project's
    # AVX2-only EPYC). Integer sums are exact either way; what is left is the float rounding of the requantization
    # (one output step at most).
    peak = float(np.abs(want).max())
    assert np.abs(emulated - want).max() < 0.05 * peak
    np.testing.assert_allclose(fused, emulated, atol=0.02 * peak)


def test_float_output_is_not_requantized() -> None:
    model = _two_convs()
    _, ranges = _ranges(model, np.random.default_rng(4).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32))
    assert calibration_tensors(model, float_outputs=("conv2",)) == ["x", "c1", "r1"]
    quantize_qdq(model, ranges, float_outputs=("conv2",))
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    assert list(conv2.output) == ["y"]  # the graph output comes straight from the node, no QuantizeLinear


def test_missing_ranges_are_named() -> None:
    with pytest.raises(ModelBuildError, match="lacks ranges"):
        quantize_qdq(_two_convs(), {"x": (-1.0, 1.0)})


def test_excluded_nodes_stay_float() -> None:
    model = _two_convs()
    assert quantize_qdq(model, {"r1": (0.0, 3.0), "y": (-2.0, 2.0)}, exclude=("conv1",)) == 1
    conv1 = next(n for n in model.graph.node if n.name == "conv1")
    assert list(conv1.input) == ["x", "w1", "b1"]
