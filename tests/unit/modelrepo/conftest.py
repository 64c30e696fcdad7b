"""Fixtures of the model-build tests: the real wheel cache and the real, built model repository."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from server.modelrepo import build_model_repository
from server.settings import Settings


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Settings().model_cache_dir


@pytest.fixture(scope="session")
def repo(cache_dir: Path) -> Path:
    repository = Settings().model_repository
    build_model_repository(repository, cache_dir, log=lambda _msg: None)
    return repository


def session(path: Path | bytes, threads: int = 2) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), opts,
                                providers=["CPUExecutionProvider"])


def model_path(repo: Path, name: str, filename: str = "model.onnx") -> Path:
    return repo / name / "1" / filename


def no_pip(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("the builder must not call pip here")


def files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def cosine(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def smooth_images(n: int, h: int, w: int, seed: int) -> np.ndarray[Any, Any]:
    """Low-frequency BGR 0..255 images: closer to photos than white noise, and different per item."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, 3, h // 32, w // 32)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 32, axis=2), 32, axis=3)

