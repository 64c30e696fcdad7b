"""Private directories and files whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.files import ensure_private_dir, ensure_private_file


@pytest.fixture(autouse=True)
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_missing_directories_are_created_0700(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    ensure_private_dir(target)
    assert [_mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", target)] == [0o700] * 3


def test_existing_directories_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir(mode=0o755)
    ensure_private_dir(tmp_path / "shared")
    assert _mode(tmp_path / "shared") == 0o755


def test_files_are_created_0600_and_loose_ones_tightened(tmp_path: Path) -> None:
    fresh = tmp_path / "db"
    ensure_private_file(fresh)
    assert _mode(fresh) == 0o600 and fresh.read_bytes() == b""
    loose = tmp_path / "old"
    loose.write_bytes(b"data")
    loose.chmod(0o644)
    ensure_private_file(loose)
    assert _mode(loose) == 0o600 and loose.read_bytes() == b"data"
