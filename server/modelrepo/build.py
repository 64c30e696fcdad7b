"""Build the model repository: every recipe's files and config.pbtxt, checked, pinned and recorded in a manifest."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from server.inference.model_config import TritonServing, config_path, onnx_config, render_config
from server.modelrepo import detector, embedder, landmarker
from server.modelrepo.recipe import Artifact, ModelRecipe
from server.modelrepo.sources import Log, fetch_source, sha256_bytes, sha256_file

RECIPES: dict[str, ModelRecipe] = {r.name: r for r in (detector.RECIPE, landmarker.RECIPE, embedder.RECIPE)}

# Bump when the conversion or the manifest changes on purpose (with new pins); a manifest written by another
# version is ignored, so existing files are then judged against their pinned sha256 alone. 3: the int8 embedder
# with 7-bit weights (its inputs did not change, so without the bump the old manifest would keep the old file).
BUILDER_VERSION = 3

MANIFEST_NAME = ".build.json"

# A built file whose sha256 differs from its pin is logged and recorded in the manifest but not fatal: protobuf
# serialisation and tflite2onnx naming may change across tool versions while the numerics (checked on every build
# with onnxruntime) stay the same. With the versions the pins were written against, the bytes are reproducible.


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` via a temporary file and a rename, world-readable."""
    # A crash mid-write must never leave a truncated model that a later run could mistake for a build.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # mkstemp creates 0600; Triton or the API may run as another user and must read these files.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def artifact_path(repository: Path, recipe: ModelRecipe, artifact: Artifact) -> Path:
    return repository / recipe.name / "1" / artifact.filename


def tool_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for dist in ("onnx", "tflite2onnx", "tflite", "onnxruntime", "numpy", "protobuf"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return versions


def inputs_sha256(artifact: Artifact) -> dict[str, str]:
    """sha256 of each committed file the conversion reads besides the source (missing files read as '')."""
    return {p.name: sha256_file(p) if p.is_file() else "" for p, _ in artifact.inputs}


def pinned_inputs(artifact: Artifact) -> dict[str, str]:
    """The inputs' sha256 as they were when the artifact's pin was written."""
    return {p.name: sha for p, sha in artifact.inputs}


def read_manifest(repository: Path) -> dict[str, Any]:
    try:
        data = json.loads((repository / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("builder_version") != BUILDER_VERSION:
        return {}
    return data


def _recorded(manifest: dict[str, Any], recipe: ModelRecipe, artifact: Artifact) -> dict[str, Any]:
    entry = manifest.get("models", {}).get(recipe.name, {})
    if not isinstance(entry, dict) or entry.get("source_sha256") != recipe.source.sha256:
        return {}
    record = entry.get("files", {}).get(artifact.filename)
    return record if isinstance(record, dict) else {}


def expected_sha256(manifest: dict[str, Any], recipe: ModelRecipe, artifact: Artifact) -> str | None:
    """The sha256 an existing file must have to count as built: the manifest's record if it was made from the
    same source and inputs, else the pin."""
    record = _recorded(manifest, recipe, artifact)
    current = inputs_sha256(artifact)
    if record and record.get("inputs_sha256", {}) == current:
        sha = record.get("sha256")
        return sha if isinstance(sha, str) else None
    return artifact.pinned_sha256 if artifact.pinned_sha256 and current == pinned_inputs(artifact) else None


def _file_record(artifact: Artifact, sha: str, tools: dict[str, str] | None) -> dict[str, Any]:
    record: dict[str, Any] = {"sha256": sha, "pinned_sha256": artifact.pinned_sha256,
                              "matches_pin": sha == artifact.pinned_sha256, "inputs_sha256": inputs_sha256(artifact)}
    if tools is not None:
        record["tools"] = tools
    return record


def _write_config(repository: Path, recipe: ModelRecipe, log: Log, serving: TritonServing) -> None:
    path = config_path(repository, recipe.name)
    # The config is generated: any other text (an edit, an older layout) is replaced by the canonical rendering.
    text = render_config(onnx_config(recipe.spec, serving))
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write(path, text.encode())
        log(f"{recipe.name}: wrote {path}")


def build_model_repository(
    repository: Path, cache_dir: Path, *, force: bool = False, log: Log = print, tensorrt_fp16: bool = False
) -> dict[Path, str]:
    """Build every recipe's files under ``<repository>/<model>/1/`` and its ``config.pbtxt``; returns path -> sha256.

    Files that still have the sha256 recorded in ``.build.json`` (or the pinned one) are left alone, so a second
    run is a fast no-op without network. Wheels are cached in ``<cache_dir>/wheels``.
    """
    repository = Path(repository)
    cache_dir = Path(cache_dir)
    manifest = read_manifest(repository)
    models: dict[str, Any] = dict(manifest.get("models", {})) if manifest else {}
    result: dict[Path, str] = {}
    changed = not manifest
    for recipe in RECIPES.values():
        source: bytes | None = None
        entry = models.get(recipe.name)
        if not isinstance(entry, dict) or entry.get("source_sha256") != recipe.source.sha256:
            entry = {"source": f"{recipe.source.requirement}:{recipe.source.member}",
                     "source_sha256": recipe.source.sha256, "files": {}}
            changed = True
        files: dict[str, Any] = dict(entry.get("files", {}))
        for artifact in recipe.artifacts:
            label = f"{recipe.name}/{artifact.filename}"
            path = artifact_path(repository, recipe, artifact)
            expected = expected_sha256(manifest, recipe, artifact)
            found = sha256_file(path) if path.is_file() else None
            if not force and found is not None and found == expected:
                log(f"{label}: up to date ({found[:12]})")
                record = files.get(artifact.filename, {})
                if record.get("sha256") != found or record.get("inputs_sha256") != inputs_sha256(artifact):
                    # Up to date against the pin with no (current) manifest record, e.g. the manifest was deleted.
                    files[artifact.filename] = _file_record(artifact, found, None)
                    changed = True
                result[path] = found
                continue
            if force:
                log(f"{label}: rebuilding (forced)")
            elif found is None:
                log(f"{label}: building")
            elif expected is None:
                log(f"{label}: no recorded sha256 for the existing file and its inputs; rebuilding")
            else:
                log(f"{label}: sha256 {found[:12]} does not match the recorded {expected[:12]} "
                    "(modified, partly written or built from other inputs); rebuilding")
            if source is None:
                source = fetch_source(cache_dir, recipe.source, log)
            built = artifact.convert(source)
            artifact.verify(built, source)
            sha = sha256_bytes(built)
            pinned = artifact.pinned_sha256
            if pinned and sha != pinned:
                why = ("its inputs changed since the pin (update the pin)" if inputs_sha256(artifact)
                       != pinned_inputs(artifact) else f"converter versions changed ({tool_versions()})")
                log(f"{label}: WARNING built sha256 {sha} differs from the pinned {pinned}; {why}. "
                    "The numerical checks passed; keeping it.")
            atomic_write(path, built)
            log(f"{label}: wrote {path} ({len(built) / 1e6:.1f} MB, sha256 {sha[:12]})")
            files[artifact.filename] = _file_record(artifact, sha, tool_versions())
            changed = True
            result[path] = sha
        _write_config(repository, recipe, log, TritonServing(tensorrt_fp16=tensorrt_fp16))
        models[recipe.name] = {**entry, "files": files}
    if changed:
        body = {"builder_version": BUILDER_VERSION, "models": models}
        atomic_write(repository / MANIFEST_NAME, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())
    return result
