"""ONNX graph edits: the PRelu rewrites, BatchNorm folding, initializer clean-up."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from server.modelrepo.graph import drop_unused_initializers, fold_batchnorm, rewrite_prelu


def _run(model: onnx.ModelProto, **feeds: np.ndarray) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    # No graph optimisation: compare the edited graph itself, not what onnxruntime fuses it into.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)  # type: ignore[no-any-return]


def _prelu_model(slope: np.ndarray, x_shape: list[int]) -> onnx.ModelProto:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("PRelu", ["x", "a"], ["y"], name="p")],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, x_shape)],
        [onnx.numpy_helper.from_array(slope, "a")],
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("slope_shape", [(4, 1, 1), (1, 4, 1, 1), (5,)])
def test_prelu_rewrite_matches_prelu(slope_shape: tuple[int, ...]) -> None:
    x_shape = [2, 4, 3, 5]
    slope = np.random.default_rng(8).uniform(-1, 1, slope_shape).astype(np.float32)
    model = _prelu_model(slope, x_shape)
    assert rewrite_prelu(model.graph) == 1
    assert [n.op_type for n in model.graph.node] == ["Relu", "Min", "Mul", "Add"]
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(9).normal(size=x_shape).astype(np.float32)
    (y,) = _run(model, x=x)
    np.testing.assert_array_equal(y, np.where(x >= 0, x, slope * x))


@pytest.mark.parametrize("slope_shape", [(4, 1, 1), (5,)])
def test_short_prelu_rewrite_is_one_op_shorter_and_equal_within_a_rounding(slope_shape: tuple[int, ...]) -> None:
    x_shape = [2, 4, 3, 5]
    slope = np.random.default_rng(10).uniform(-1, 1.2, slope_shape).astype(np.float32)
    model = _prelu_model(slope, x_shape)
    assert rewrite_prelu(model.graph, exact=False) == 1
    assert [n.op_type for n in model.graph.node] == ["Min", "Mul", "Add"]
    assert "a" not in {x for n in model.graph.node for x in n.input}  # the slope is replaced by slope - 1
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(11).normal(size=x_shape).astype(np.float32)
    (y,) = _run(model, x=x)
    want = np.where(x >= 0, x, slope * x)
    np.testing.assert_array_equal(y[x >= 0], want[x >= 0])
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


def _conv_bn_model(with_bias: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(12)
    nh = onnx.numpy_helper
    inits = [nh.from_array(rng.normal(size=(6, 3, 3, 3)).astype(np.float32), "w"),
             nh.from_array(rng.uniform(0.5, 2, 6).astype(np.float32), "gamma"),
             nh.from_array(rng.normal(size=6).astype(np.float32), "beta"),
             nh.from_array(rng.normal(size=6).astype(np.float32), "mean"),
             nh.from_array(rng.uniform(0.1, 3, 6).astype(np.float32), "var"),
             nh.from_array(rng.normal(size=(4, 6 * 5 * 5)).astype(np.float32), "gw"),
             nh.from_array(rng.normal(size=4).astype(np.float32), "gb"),
             nh.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "g2"),
             nh.from_array(rng.normal(size=4).astype(np.float32), "b2"),
             nh.from_array(rng.normal(size=4).astype(np.float32), "m2"),
             nh.from_array(rng.uniform(0.1, 3, 4).astype(np.float32), "v2")]
    conv_in = ["x", "w"]
    if with_bias:
        inits.append(nh.from_array(rng.normal(size=6).astype(np.float32), "b"))
        conv_in.append("b")
    nodes = [onnx.helper.make_node("Conv", conv_in, ["c"], name="conv"),
             onnx.helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], epsilon=1e-3),
             onnx.helper.make_node("Flatten", ["bn"], ["f"]),
             onnx.helper.make_node("Gemm", ["f", "gw", "gb"], ["g"], name="gemm", transB=1),
             onnx.helper.make_node("BatchNormalization", ["g", "g2", "b2", "m2", "v2"], ["y"])]
    graph = onnx.helper.make_graph(
        nodes, "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 7, 7])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])], inits)
    # Like the SFace file, list the initializers among the graph inputs too.
    graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_batchnorm_into_conv_and_gemm(with_bias: bool) -> None:
    model = _conv_bn_model(with_bias)
    x = np.random.default_rng(13).normal(size=(2, 3, 7, 7)).astype(np.float32)
    (want,) = _run(model, x=x)
    assert fold_batchnorm(model.graph) == 2
    assert [n.op_type for n in model.graph.node] == ["Conv", "Flatten", "Gemm"]
    assert model.graph.node[-1].output[0] == "y"  # the folded node takes over the BatchNorm's output
    assert [i.name for i in model.graph.input] == ["x"]  # folded-away parameters left the inputs too
    onnx.checker.check_model(model, full_check=True)
    (got,) = _run(model, x=x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_drop_unused_initializers_keeps_what_is_read() -> None:
    model = _prelu_model(np.ones(4, np.float32), [1, 4])
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(2, np.float32), "stale"))
    model.graph.input.append(onnx.helper.make_tensor_value_info("stale", onnx.TensorProto.FLOAT, [2]))
    drop_unused_initializers(model.graph)
    assert [t.name for t in model.graph.initializer] == ["a"]
    assert [i.name for i in model.graph.input] == ["x"]
