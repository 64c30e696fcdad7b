"""What the build makes of one model: its source wheel, declared I/O, and the files converted from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from server.inference.backend import ModelSpec
from server.modelrepo.sources import SourceModel

Convert = Callable[[bytes], bytes]  # original file -> built file
Verify = Callable[[bytes, bytes], None]  # (built, original); raises ModelBuildError


@dataclass(frozen=True, slots=True)
class Artifact:
    """One file in ``<model>/1/``: how it is converted and checked, and the sha256 it is pinned to.

    ``inputs`` are committed files the conversion also reads (a calibration table), each with the sha256 it had
    when the pin was written: when one changes, neither the pin nor a file recorded in the manifest from the old
    inputs is trusted any more, and the file is rebuilt.
    """

    filename: str
    convert: Convert
    verify: Verify
    pinned_sha256: str
    inputs: tuple[tuple[Path, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ModelRecipe:
    """A model of the repository: source, declared I/O (rendered into config.pbtxt) and its files."""

    name: str
    source: SourceModel
    spec: ModelSpec
    artifacts: tuple[Artifact, ...]
