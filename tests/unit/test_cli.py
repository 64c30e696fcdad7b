"""``facerec compare`` and ``facerec token`` as a user runs them (subprocesses, real models and photos)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from server.inference.backend import MODEL_NAMES
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

SEED_KEYS = {"id", "reference", "channel", "compare_result", "compare_similarity", "created", "face1", "face2"}
DECISION_KEYS = {"threshold", "quality_filter"}  # additions: what the verdict was decided with
FACE_KEYS = {"x1", "y1", "x2", "y2", "landmark_68", "eye_dist", "face_luminance", "face_occlusion", "face_quality",
             "left_eye_closed", "right_eye_closed", "mouth_opened", "pitch", "yaw", "roll"}
# Additions the contract allows ("more keys may be added").
FACE_EXTRAS = {"faces_found", "detection_score", "orientation_correction", "quality_components"}


def _run(*args: str, data_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FACEREC_DATA_DIR": str(data_dir), "FACEREC_ORT_INTRA_THREADS": "2",
           "FACEREC_DEVICE": "cpu", "FACEREC_MODEL_REPOSITORY": str(ROOT / "model_repository")}
    env.pop("FACEREC_AUTH_ISSUER", None)
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def models_ready(backend: Any) -> None:
    """The session backend fixture builds the model repository when it is missing."""
    for m in MODEL_NAMES:
        assert (ROOT / "model_repository" / m / "1" / "model.onnx").is_file()


@pytest.fixture(scope="module")
def compare_run(faces_dir: Path, models_ready: None, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[subprocess.CompletedProcess[str], Path]:
    tmp = tmp_path_factory.mktemp("cli")
    overlay = tmp / "out" / "overlay.png"
    proc = _run("compare", str(faces_dir / "obama_01_portrait_2012.jpg"), str(faces_dir / "obama_02_congress_2009.jpg"),
                "--channel", "WEB", "--reference", "contract-0002", "--overlay", str(overlay), data_dir=tmp)
    return proc, overlay


def test_compare_prints_the_seed_json(compare_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, _ = compare_run
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert set(body) == SEED_KEYS | DECISION_KEYS
    assert (body["threshold"], body["quality_filter"]) == (Settings().threshold, Settings().quality_filter)
    assert uuid.UUID(body["id"])
    assert body["reference"] == "contract-0002" and body["channel"] == "WEB"
    assert body["compare_result"] == "Same person"
    assert 0.5 <= body["compare_similarity"] <= 1.0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}", body["created"])
    datetime.fromisoformat(body["created"])
    for face in (body["face1"], body["face2"]):
        assert set(face) >= FACE_KEYS and set(face) - FACE_KEYS <= FACE_EXTRAS
        assert all(re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", k) for k in face)
        assert all(isinstance(face[k], int) for k in ("x1", "y1", "x2", "y2"))
        assert face["x1"] < face["x2"] and face["y1"] < face["y2"]
        assert len(face["landmark_68"]) == 68 and all(set(p) == {"x", "y"} for p in face["landmark_68"])
        for k in FACE_KEYS - {"x1", "y1", "x2", "y2", "landmark_68"}:
            assert isinstance(face[k], float | int), k
        assert 0 <= face["face_quality"] <= 1 and 0 <= face["face_occlusion"] <= 1


def test_compare_overlay_is_a_readable_png(compare_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, overlay = compare_run
    assert proc.returncode == 0, proc.stderr
    assert str(overlay) in proc.stderr
    with Image.open(overlay) as img:
        assert img.format == "PNG"
        img.load()
        assert img.height >= 480 and img.width >= 480  # two panels side by side, 480 px high, plus a caption


def test_compare_different_people(faces_dir: Path, models_ready: None, tmp_path: Path) -> None:
    proc = _run("compare", str(faces_dir / "obama_03_blueroom_2010.jpg"), str(faces_dir / "biden_01_blueroom_2010.jpg"),
                data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["compare_result"] == "Different person" and body["channel"] == "OTHER"
    assert body["compare_similarity"] < 0.5


def _one_line_error(proc: subprocess.CompletedProcess[str], name: str) -> None:
    assert proc.returncode != 0
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and name in lines[0], lines[0]


def test_compare_no_face_fails_naming_the_file(faces_dir: Path, models_ready: None, tmp_path: Path) -> None:
    proc = _run("compare", str(faces_dir / "obama_01_portrait_2012.jpg"), str(faces_dir / "no_face_coffee.jpg"),
                data_dir=tmp_path)
    _one_line_error(proc, "no_face_coffee.jpg")


def tiny_face_card(faces_dir: Path, out: Path) -> Path:
    """obama_01's head (eyes 96 px apart) shrunk 8x onto a 640x400 card: eyes 12 px apart (an ID-card thumbnail)."""
    with Image.open(faces_dir / "obama_01_portrait_2012.jpg") as img:
        small = img.convert("RGB").crop((250, 20, 640, 460)).resize((49, 55), Image.Resampling.LANCZOS)
    card = Image.new("RGB", (640, 400), (205, 205, 205))
    card.paste(small, (60, 170))
    card.save(out)
    return out


def test_compare_threshold_and_quality_filter(faces_dir: Path, models_ready: None, tmp_path: Path) -> None:
    card = tiny_face_card(faces_dir, tmp_path / "card.png")
    selfie = str(faces_dir / "obama_02_congress_2009.jpg")
    proc = _run("compare", str(card), selfie, "--quality-filter", "low", data_dir=tmp_path)
    _one_line_error(proc, "card.png")
    assert "size" in proc.stderr and "LOW" in proc.stderr
    # NONE compares it anyway; a threshold of 1 makes even a true match "Different person".
    proc = _run("compare", str(card), selfie, "--quality-filter", "NONE", "--threshold", "1", data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert (body["threshold"], body["quality_filter"], body["compare_result"]) == (1.0, "NONE", "Different person")
    assert body["face1"]["quality_components"]["size"] < 0.11
    bad = _run("compare", str(card), selfie, "--threshold", "1.5", data_dir=tmp_path)
    _one_line_error(bad, "--threshold")


def test_compare_not_an_image_fails_naming_the_file(faces_dir: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture\n")
    proc = _run("compare", str(text), str(faces_dir / "obama_01_portrait_2012.jpg"), data_dir=tmp_path)
    _one_line_error(proc, "notes.jpg")


def test_compare_missing_file_fails_naming_the_file(faces_dir: Path, tmp_path: Path) -> None:
    proc = _run("compare", str(faces_dir / "obama_01_portrait_2012.jpg"), str(tmp_path / "absent.png"),
                data_dir=tmp_path)
    _one_line_error(proc, "absent.png")


def test_token_prints_a_jwt(tmp_path: Path) -> None:
    proc = _run("token", "--company", "ACME", data_dir=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.strip()
    parts = token.split(".")
    assert len(parts) == 3 and all(parts)
    import jwt

    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims.get("company_id") == "ACME"
    assert any(tmp_path.iterdir())  # the local issuer's key went to FACEREC_DATA_DIR
