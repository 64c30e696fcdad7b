"""Pure helpers of the Triton backend and the local Triton harness (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from server.errors import DeadlineExceeded, InferenceFailed, Unavailable
from server.inference.backend import ModelSpec, TensorSpec
from server.inference.model_config import onnx_config, parse_config, render_config, spec_from_config
from server.inference.triton import map_error
from tooling import triton_local
from tooling.triton_local import (
    TritonUnavailableError,
    build_python_repository,
    render_model_py,
    render_python_config,
)

SPEC = ModelSpec(
    "landmarker", 64,
    (TensorSpec("input", "float32", (3, 192, 192)),),
    (TensorSpec("landmarks", "float32", (1404,)), TensorSpec("presence", "float32", (1,))),
)


def test_python_config_keeps_the_tensors_and_batches_on_cpu() -> None:
    text = render_python_config(SPEC, Path("/models/landmarker/1/model.onnx"), max_queue_delay_us=500)
    config = parse_config(text)
    assert spec_from_config(config) == SPEC
    assert config.backend == "python" and not config.platform
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
    assert config.parameters["onnx_path"].string_value == "/models/landmarker/1/model.onnx"
    assert config.parameters["intra_op_threads"].string_value == "0"


def test_model_py_compiles_and_puts_site_packages_first() -> None:
    source = render_model_py(["/venv/site-packages"])
    compile(source, "model.py", "exec")
    assert source.index("/venv/site-packages") < source.index("import numpy")
    assert "class TritonPythonModel" in source


def test_build_repository_needs_the_onnx_files(tmp_path: Path) -> None:
    with pytest.raises(TritonUnavailableError, match="make models"):
        build_python_repository(tmp_path / "missing", tmp_path / "out", models=("embedder",))


def test_build_repository_writes_config_and_model(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "landmarker" / "1").mkdir(parents=True)
    (src / "landmarker" / "1" / "model.onnx").write_bytes(b"onnx")
    (src / "landmarker" / "config.pbtxt").write_text(render_config(onnx_config(SPEC)))
    build_python_repository(src, tmp_path / "out", models=("landmarker",))
    config = parse_config((tmp_path / "out" / "landmarker" / "config.pbtxt").read_text())
    assert spec_from_config(config) == SPEC
    assert config.parameters["onnx_path"].string_value == str((src / "landmarker" / "1" / "model.onnx").resolve())
    assert (tmp_path / "out" / "landmarker" / "1" / "model.py").is_file()


def test_missing_stub_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pytriton")
    monkeypatch.setattr(triton_local, "PY_TAG", "2.7")
    with pytest.raises(TritonUnavailableError, match=r"2\.7"):
        triton_local.find_binary()


def test_spec_from_the_model_config_reply() -> None:
    # TritonBackend.connect reads get_model_config's protobuf reply: its .config is the same ModelConfig message.
    reply = service_pb2.ModelConfigResponse(config=onnx_config(SPEC))
    assert spec_from_config(service_pb2.ModelConfigResponse.FromString(reply.SerializeToString()).config) == SPEC


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("StatusCode.UNAVAILABLE", Unavailable),
        ("StatusCode.DEADLINE_EXCEEDED", DeadlineExceeded),
        ("StatusCode.INTERNAL", InferenceFailed),
        ("StatusCode.INVALID_ARGUMENT", InferenceFailed),
    ],
)
def test_errors_map_without_leaking(status: str, expected: type[Exception]) -> None:
    err = map_error("embedder", InferenceServerException("secret /path/in/server", status=status))
    assert type(err) is expected
    assert "secret" not in str(err)
