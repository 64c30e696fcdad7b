"""Files and directories that hold the service's data (scans, signing key) are private to its user."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents with mode 0700 (the umask does not widen them); directories that
    already exist are left as their owner set them."""
    missing: list[Path] = []
    current = Path(path)
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            continue  # created meanwhile by someone else: theirs
        os.chmod(directory, PRIVATE_DIR)  # mkdir's mode passes through the umask
    return path


def ensure_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists; an existing one readable by others is tightened."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        tighten(path)
    else:
        os.close(fd)


def tighten(path: Path) -> None:
    """Make an existing file 0600 if group or others may read it (a missing file is fine)."""
    with contextlib.suppress(FileNotFoundError):
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("%s had mode %o; setting 0600", path, mode)
            os.chmod(path, PRIVATE_FILE)
