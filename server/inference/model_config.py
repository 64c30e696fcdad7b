"""Triton model configs (``config.pbtxt``), read and written only through tritonclient's ``ModelConfig`` protobuf.

The server (model specs), the model build (the committed configs) and the local Triton test harness (Python-backend
configs) all go through this module, so there is one reader and one writer of the format.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from server.inference.backend import ModelSpec, TensorSpec

CONFIG_NAME = "config.pbtxt"

# The tensor types facerec's models use; anything else in a config is an error, not a guess.
NUMPY_TO_TRITON: dict[str, int] = {
    "float32": mc.TYPE_FP32,
    "float16": mc.TYPE_FP16,
    "int64": mc.TYPE_INT64,
    "int32": mc.TYPE_INT32,
    "uint8": mc.TYPE_UINT8,
}
_TRITON_TO_NUMPY = {triton: numpy for numpy, triton in NUMPY_TO_TRITON.items()}


def spec_from_config(config: mc.ModelConfig) -> ModelSpec:
    """The ModelSpec a model config declares (from a file, or from Triton's ``get_model_config``)."""

    def tensors(items: list[mc.ModelInput] | list[mc.ModelOutput]) -> tuple[TensorSpec, ...]:
        out = []
        for t in items:
            if t.data_type not in _TRITON_TO_NUMPY:
                raise ValueError(f"{config.name}: tensor {t.name!r} has unsupported type "
                                 f"{mc.DataType.Name(t.data_type)}")
            out.append(TensorSpec(t.name, _TRITON_TO_NUMPY[t.data_type], tuple(int(d) for d in t.dims)))
        return tuple(out)

    if not config.name:
        raise ValueError("model config lacks a name")
    return ModelSpec(config.name, int(config.max_batch_size), tensors(list(config.input)),
                     tensors(list(config.output)))


def _with_tensors(config: mc.ModelConfig, spec: ModelSpec) -> mc.ModelConfig:
    config.name = spec.name
    config.max_batch_size = spec.max_batch_size
    for target, tensors in ((config.input, spec.inputs), (config.output, spec.outputs)):
        for t in tensors:
            entry = target.add()
            entry.name = t.name
            entry.data_type = NUMPY_TO_TRITON[t.dtype]
            entry.dims.extend(t.dims)
    return config


@dataclass(frozen=True, slots=True)
class TritonServing:
    """How Triton queues, warms and accelerates one model (written into its config.pbtxt).

    ``max_queue_size`` counts Triton requests, not rows. It is a memory bound, never a refusal point for work the
    API admitted: each API worker keeps at most ``MAX_CONCURRENT_TRITON_CALLS`` calls per model in flight (its
    batchers send batches, not requests), so 1024 queued calls cover 256 API workers. Queued calls carry no
    default timeout (the API bounds each call with its own client timeout); ``allow_timeout_override`` lets a
    client that sets a per-request Triton timeout have its expired requests rejected from the queue unrun.
    """

    max_queue_delay_us: int = 2000
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 1024
    # Warm-up at load (zeros): the first real request would otherwise pay for memory arenas, cuDNN algorithm
    # search or TensorRT engine builds. Variable dims (the detector's canvas) are warmed at ``warmup_side``.
    warmup_batch_sizes: tuple[int, ...] = (1,)
    warmup_side: int = 640
    # ONNX Runtime's TensorRT execution provider in FP16 (GPU only, opt-in: `facerec models --tensorrt-fp16`).
    tensorrt_fp16: bool = False


# What one API worker keeps in flight per model against Triton (server/inference/batched.py uses it): the
# bound the queue size above is sized from.
MAX_CONCURRENT_TRITON_CALLS = 4


def _serving(config: mc.ModelConfig, spec: ModelSpec, serving: TritonServing) -> mc.ModelConfig:
    batching = config.dynamic_batching
    batching.preferred_batch_size.extend(serving.preferred_batch_sizes)
    batching.max_queue_delay_microseconds = serving.max_queue_delay_us
    policy = batching.default_queue_policy
    policy.timeout_action = mc.ModelQueuePolicy.REJECT
    policy.allow_timeout_override = True
    policy.max_queue_size = serving.max_queue_size
    for batch in serving.warmup_batch_sizes:
        warm = config.model_warmup.add(name=f"zeros_batch_{batch}", batch_size=batch)
        for t in spec.inputs:
            entry = warm.inputs[t.name]
            entry.data_type = NUMPY_TO_TRITON[t.dtype]
            entry.dims.extend(serving.warmup_side if d < 0 else d for d in t.dims)
            entry.zero_data = True
    return config


def onnx_config(spec: ModelSpec, serving: TritonServing | None = None) -> mc.ModelConfig:
    """Config of a model served by Triton's ONNX Runtime backend: dynamic batching with a bounded queue, warm-up
    at load, one instance of the kind Triton picks (a GPU where it sees one, so the same repository also loads
    on a CPU-only Triton), optionally TensorRT FP16."""
    serving = serving or TritonServing()
    config = _serving(_with_tensors(mc.ModelConfig(platform="onnxruntime_onnx"), spec), spec, serving)
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_AUTO, count=1)
    if serving.tensorrt_fp16:
        trt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        trt.parameters["precision_mode"] = "FP16"
    return config


def python_config(spec: ModelSpec, parameters: Mapping[str, str],
                  serving: TritonServing | None = None) -> mc.ModelConfig:
    """Config of a Python-backend model (the local CPU Triton of tests and bench): ``spec``'s tensors and the
    same queue policy and warm-up as :func:`onnx_config`, one CPU instance."""
    config = _serving(_with_tensors(mc.ModelConfig(backend="python"), spec), spec, serving or TritonServing())
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


def render_config(config: mc.ModelConfig) -> str:
    """``config`` in protobuf text format (what Triton reads from ``config.pbtxt``)."""
    text: str = text_format.MessageToString(config, use_short_repeated_primitives=True)
    return text


def parse_config(text: str) -> mc.ModelConfig:
    """A ``config.pbtxt`` body as a ModelConfig; ValueError when it is not a valid model config."""
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        raise ValueError(f"not a valid Triton model config: {exc}") from exc


def read_config(path: Path) -> mc.ModelConfig:
    """Read one ``config.pbtxt`` (OSError when unreadable, ValueError when invalid)."""
    try:
        return parse_config(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def config_path(repository: Path, model: str) -> Path:
    """Where ``model``'s config lives in a model repository."""
    return repository / model / CONFIG_NAME


def load_spec(repository: Path, model: str) -> ModelSpec:
    """The ModelSpec of ``model`` from ``<repository>/<model>/config.pbtxt``."""
    spec = spec_from_config(read_config(config_path(repository, model)))
    if spec.name != model:
        raise ValueError(f"{config_path(repository, model)} names the model {spec.name!r}, not {model!r}")
    return spec
