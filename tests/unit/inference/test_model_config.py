"""config.pbtxt through tritonclient's ModelConfig: one reader and one writer for the server, build and tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from server.inference.backend import MODEL_NAMES, ModelSpec, TensorSpec
from server.inference.model_config import (
    MAX_CONCURRENT_TRITON_CALLS,
    TritonServing,
    load_spec,
    onnx_config,
    parse_config,
    python_config,
    read_config,
    render_config,
    spec_from_config,
)
from server.settings import PROJECT_ROOT

SPEC = ModelSpec(
    "detector", 16,
    (TensorSpec("input", "float32", (3, -1, -1)),),
    (TensorSpec("cls_8", "float32", (-1, 1)), TensorSpec("kps_8", "float32", (-1, 10))),
)


def test_onnx_config_round_trips_through_text() -> None:
    config = onnx_config(SPEC, TritonServing(preferred_batch_sizes=(4, 8), max_queue_delay_us=750))
    text = render_config(config)
    back = parse_config(text)
    assert back == config
    assert spec_from_config(back) == SPEC
    assert back.platform == "onnxruntime_onnx"
    assert list(back.dynamic_batching.preferred_batch_size) == [4, 8]
    assert back.dynamic_batching.max_queue_delay_microseconds == 750
    assert [(g.kind, g.count) for g in back.instance_group] == [(mc.ModelInstanceGroup.KIND_AUTO, 1)]


def test_the_classic_bracketed_layout_parses_too() -> None:
    # Hand-written configs use lists in brackets; protobuf text format reads both layouts.
    text = """name: "detector"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "input" data_type: TYPE_FP32 dims: [ 3, -1, -1 ] } ]
output [
  { name: "cls_8" data_type: TYPE_FP32 dims: [ -1, 1 ] },
  { name: "kps_8" data_type: TYPE_FP32 dims: [ -1, 10 ] }
]
# a comment
dynamic_batching { max_queue_delay_microseconds: 2000 }
"""
    assert spec_from_config(parse_config(text)) == SPEC


def test_python_config_carries_string_parameters() -> None:
    config = python_config(SPEC, {"onnx_path": '/a dir/with "quotes"/model.onnx'},
                           TritonServing(max_queue_delay_us=10))
    back = parse_config(render_config(config))
    assert back.backend == "python"
    assert back.parameters["onnx_path"].string_value == '/a dir/with "quotes"/model.onnx'
    assert [g.kind for g in back.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]


@pytest.mark.parametrize("text", ['name: "x" max_batch_size: "sixteen"', "input { dims: [3 }", "bogus_field: 1"])
def test_invalid_text_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="not a valid Triton model config"):
        parse_config(text)


def test_unsupported_tensor_type_is_refused() -> None:
    config = onnx_config(SPEC)
    config.input[0].data_type = mc.TYPE_STRING
    with pytest.raises(ValueError, match="unsupported type TYPE_STRING"):
        spec_from_config(config)


def test_load_spec_checks_the_model_name(tmp_path: Path) -> None:
    (tmp_path / "embedder").mkdir()
    (tmp_path / "embedder" / "config.pbtxt").write_text(render_config(onnx_config(SPEC)))
    with pytest.raises(ValueError, match="names the model 'detector', not 'embedder'"):
        load_spec(tmp_path, "embedder")


def test_read_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text("name: ")
    with pytest.raises(ValueError, match=str(path)):
        read_config(path)
    with pytest.raises(OSError):
        read_config(tmp_path / "absent.pbtxt")


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_committed_configs_load(model: str) -> None:
    spec = load_spec(PROJECT_ROOT / "model_repository", model)
    assert spec.name == model and spec.inputs and spec.outputs


def test_triton_queue_is_bounded_and_deadlines_can_reject_queued_work() -> None:
    policy = onnx_config(SPEC).dynamic_batching.default_queue_policy
    assert policy.max_queue_size == TritonServing().max_queue_size > 0
    assert policy.timeout_action == mc.ModelQueuePolicy.REJECT and policy.allow_timeout_override
    # The bound is a memory limit admitted work cannot reach: every API worker keeps at most
    # MAX_CONCURRENT_TRITON_CALLS calls per model in flight, so it holds 256 workers' worth.
    assert policy.max_queue_size >= 256 * MAX_CONCURRENT_TRITON_CALLS


def test_models_are_warmed_at_load_with_concrete_shapes() -> None:
    config = onnx_config(SPEC, TritonServing(warmup_batch_sizes=(1, 16), warmup_side=320))
    warm = {w.name: w for w in config.model_warmup}
    assert sorted(warm) == ["zeros_batch_1", "zeros_batch_16"]
    assert warm["zeros_batch_16"].batch_size == 16
    entry = warm["zeros_batch_1"].inputs["input"]
    assert list(entry.dims) == [3, 320, 320] and entry.zero_data and entry.data_type == mc.TYPE_FP32
    # The Python backend of the local Triton gets the same warm-up and queue policy.
    local = python_config(SPEC, {}, TritonServing(warmup_batch_sizes=(1, 16), warmup_side=320))
    assert list(local.model_warmup) == list(config.model_warmup)
    assert local.dynamic_batching.default_queue_policy == config.dynamic_batching.default_queue_policy


def test_tensorrt_fp16_is_opt_in() -> None:
    assert not onnx_config(SPEC).HasField("optimization")
    config = parse_config(render_config(onnx_config(SPEC, TritonServing(tensorrt_fp16=True))))
    (trt,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and dict(trt.parameters) == {"precision_mode": "FP16"}
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_AUTO]
