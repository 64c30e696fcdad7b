"""Raw model cost on a GPU through PyTorch: our ONNX models converted with onnx2torch, validated and timed.

    python -m bench.gpu_torch --device cuda --out /tmp/torch.json        # what bench.gpu_check runs on a GPU
    python -m bench.gpu_torch --device cpu --validate-only --out /tmp/v.json   # the conversion checked here, on CPU

Bench only (no server backend): for a CUDA machine whose onnxruntime has no CUDA provider (the onnxruntime-gpu
wheel is too large to carry to an offline machine), this gives the models' own cost on the GPU. Each model file of
``model_repository`` is converted with onnx2torch (after ``prepare_onnx``: Constant nodes become initializers and
an opset newer than onnx2torch knows is declared as 17, which changes no semantics of the ops our models use), then

1. **validated**: outputs against onnxruntime (CPU provider) on inputs cut from real photos (detector at 320x320 and
   640x640, batch 1 and 4; landmarker and embedder batch 1 and 4): max abs difference per output relative to the
   output's range, and the embedder's cosine; fp16 autocast the same way;
2. **timed** at batch 1..64 per precision (``fp32`` with TF32 off, ``fp16`` autocast, ``tf32`` on request): inputs
   resident on the device, CUDA events around each call after a warm-up (``ms_p50``), plus one host round trip per
   step (numpy in, numpy out, copies and synchronisation included: ``host_ms_p50``);
3. **per pair**: two photos through the detector, ``passes`` landmarker runs and the embedder for the two faces, at
   the best per-item cost measured: the pairs/s a GPU could take if the host side were free.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import math
import statistics
import sys
import time
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.common import MODELS, ROOT, csv_ints, load_pairs, write_json

REPOSITORY = ROOT / "model_repository"
# onnx2torch 1.5 resolves each op by its schema's since_version and knows versions up to ~17 of the ops we use;
# the embedder is declared opset 21, where only Constant and Flatten gained new versions (wider type lists).
MAX_OPSET = 17
# Input per model: name, and the (C, H, W) of one item; the detector's H = W is the canvas side of each step.
INPUTS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "detector": ("input", (3, 640, 640)),
    "landmarker": ("input", (3, 192, 192)),
    "embedder": ("data", (3, 112, 112)),
}
DETECTOR_SIDES = (320, 640)
BATCHES = (1, 2, 4, 8, 16, 32, 64)
PRECISIONS = ("fp32", "fp16")
# A conversion is faithful when every output's max abs difference stays below this share of the output's range
# (at least 1: scores are probabilities) and the embedder's cosine to onnxruntime above the bound (fp32: float
# reordering only; fp16: a 10-bit mantissa; on the CPU, fp16 autocast means bfloat16, 7 bits, and fails these).
TOLERANCE = {"fp32": (1e-3, 0.9999), "fp16": (3e-2, 0.999), "tf32": (1e-2, 0.9995)}


# ------------------------------------------------------------------------------------------------ ONNX side


def prepare_onnx(model: Any, max_opset: int = MAX_OPSET) -> list[str]:
    """Make ``model`` (an onnx.ModelProto, changed in place) convertible by onnx2torch; returns what was changed.

    Constant nodes become initializers (onnx2torch lacks Constant-21), and a default-domain opset above
    ``max_opset`` is declared as ``max_opset`` (the validation step is what shows the numerics are unchanged).
    """
    changes: list[str] = []
    graph = model.graph
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
            attr = {a.name: a for a in node.attribute}
            if "value" in attr:
                tensor = type(attr["value"].t)()
                tensor.CopyFrom(attr["value"].t)
                tensor.name = node.output[0]
                graph.initializer.append(tensor)
                changes.append(f"Constant {node.output[0]} -> initializer")
                continue
        kept.append(node)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > max_opset:
            changes.append(f"opset {opset.version} -> {max_opset}")
            opset.version = max_opset
    return changes


def import_onnx2torch() -> tuple[Any, str]:
    """onnx2torch, and a note when torchvision had to be stubbed.

    onnx2torch imports ``torchvision.ops`` (for RoiAlign and NMS, which our models do not use); a torchvision
    built for another torch fails at that import, so a stub whose ops raise stands in for it then.
    """
    try:
        return importlib.import_module("onnx2torch"), ""
    except (ImportError, RuntimeError) as exc:
        first = f"{type(exc).__name__}: {exc}"
    for name in [m for m in sys.modules if m == "onnx2torch" or m.startswith(("onnx2torch.", "torchvision"))]:
        del sys.modules[name]

    def unavailable(*_: Any, **__: Any) -> Any:
        raise NotImplementedError("torchvision is stubbed out (bench.gpu_torch)")

    tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.roi_align = ops.nms = ops.batched_nms = unavailable  # type: ignore[attr-defined]
    tv.ops = ops  # type: ignore[attr-defined]
    tv.__version__ = "0+stub"  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, ops
    return importlib.import_module("onnx2torch"), f"torchvision stubbed ({first[:200]})"


def convert(path: Path) -> tuple[Any, list[str]]:
    """The torch module of one ONNX file, and the changes ``prepare_onnx`` made."""
    import onnx

    onnx2torch, _ = import_onnx2torch()
    model = onnx.load(str(path))
    changes = prepare_onnx(model)
    module = onnx2torch.convert(model)
    module.eval()
    return module, changes


# ------------------------------------------------------------------------------------------------ inputs


def photos(pairs: Path | None, folder: Path | None, limit: int = 32) -> list[npt.NDArray[np.uint8]]:
    """Up to ``limit`` distinct photos as RGB arrays (the GPU check's pairs; none: an empty list)."""
    from PIL import Image

    try:
        found, _ = load_pairs(folder, pairs, None, limit)
    except SystemExit:
        return []
    seen: dict[str, bytes] = {}
    for p in found:
        for img in (p.a, p.b):
            seen.setdefault(img.name, img.data)
    out = []
    for data in list(seen.values())[:limit]:
        with contextlib.suppress(OSError, ValueError):
            out.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return out


def _resize(img: npt.NDArray[np.uint8], w: int, h: int) -> npt.NDArray[np.uint8]:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR))


def model_input(model: str, batch: int, images: Sequence[npt.NDArray[np.uint8]], side: int = 640,
                seed: int = 0) -> npt.NDArray[np.float32]:
    """A batch as the pipeline feeds it, cut from ``images`` (cycled), or smooth noise when there are none.

    detector: the photo letterboxed on a ``side`` x ``side`` canvas, BGR 0..255; landmarker: the photo's central
    half at 192x192, RGB 0..1; embedder: its central 45 % (an LFW face) at 112x112, RGB 0..255.
    """
    _, (c, h, w) = INPUTS[model]
    if model == "detector":
        h = w = side
    if not images:
        rng = np.random.default_rng(seed)
        coarse = rng.uniform(0, 255, (batch, c, 8, 8)).astype(np.float32)
        x = np.repeat(np.repeat(coarse, -(-h // 8), axis=2), -(-w // 8), axis=3)[:, :, :h, :w]
        return np.ascontiguousarray(x / 255 if model == "landmarker" else x, dtype=np.float32)
    out = np.zeros((batch, c, h, w), np.float32)
    for i in range(batch):
        img = images[(i + seed) % len(images)]
        ih, iw = img.shape[:2]
        if model == "detector":
            scale = side / max(ih, iw)
            rw, rh = max(1, round(iw * scale)), max(1, round(ih * scale))
            out[i, :, :rh, :rw] = _resize(img, rw, rh)[:, :, ::-1].transpose(2, 0, 1)
            continue
        share = 0.5 if model == "landmarker" else 0.45
        cw, ch = max(1, int(iw * share)), max(1, int(ih * share))
        x0, y0 = (iw - cw) // 2, (ih - ch) // 2
        crop = _resize(np.ascontiguousarray(img[y0:y0 + ch, x0:x0 + cw]), w, h).transpose(2, 0, 1)
        out[i] = crop / 255 if model == "landmarker" else crop
    return out


# ------------------------------------------------------------------------------------------------ comparisons


def compare(ref: dict[str, npt.NDArray[Any]], got: dict[str, npt.NDArray[Any]]) -> dict[str, Any]:
    """Per output: max abs difference, that over the reference's range (at least 1), cosine per row of 2-D outputs."""
    out: dict[str, Any] = {}
    for name, r in ref.items():
        g = np.asarray(got[name], np.float64)
        r64 = np.asarray(r, np.float64)
        if g.shape != r64.shape:
            out[name] = {"shape": [list(r64.shape), list(g.shape)], "rel": math.inf}
            continue
        diff = float(np.max(np.abs(g - r64))) if r64.size else 0.0
        span = float(np.max(r64) - np.min(r64)) if r64.size else 0.0
        # Scores (0..1) compare in absolute terms, regressions and embeddings relative to their range.
        row: dict[str, Any] = {"max_abs": diff, "rel": diff / max(span, 1.0)}
        if r64.ndim == 2 and r64.shape[1] > 8:
            row["cosine_min"] = float(np.min(cosine_rows(r64, g)))
        out[name] = row
    return out


def cosine_rows(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = np.sum(a64 * b64, axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    out: npt.NDArray[np.float64] = num / np.maximum(den, 1e-30)
    return out


def faithful(model: str, precision: str, diffs: dict[str, Any]) -> bool:
    """Whether every output is within ``TOLERANCE`` (and the embedder's cosine above its bound)."""
    rel, cos = TOLERANCE.get(precision, TOLERANCE["fp16"])
    for row in diffs.values():
        if not row["rel"] <= rel:
            return False
        if model == "embedder" and row.get("cosine_min", 1.0) < cos:
            return False
    return True


# ------------------------------------------------------------------------------------------------ per-pair cost


def best_item_ms(steps: Sequence[dict[str, Any]], model: str, precision: str, side: int | None = None
                 ) -> dict[str, Any] | None:
    """The step of ``model`` at ``precision`` (and detector ``side``) with the lowest model ms per item."""
    rows = [s for s in steps if s["model"] == model and s["precision"] == precision and s.get("ms_p50")
            and (side is None or s.get("side") == side)]
    if not rows:
        return None
    return min(rows, key=lambda s: s["ms_p50"] / s["batch"])


def pair_costs(steps: Sequence[dict[str, Any]], passes: Sequence[int] = (1, 3)) -> list[dict[str, Any]]:
    """Model ms per pair (2 photos, 2 faces) at the best batch of each model, per precision, side and passes.

    A pair is 2 detector canvases + 2 x ``passes`` landmarker crops + 2 embedder crops; its inverse is the pairs/s
    one GPU could take from the models' side alone (no host work, no transfers, models not overlapped).
    """
    out = []
    for precision in sorted({s["precision"] for s in steps}):
        lmk, emb = best_item_ms(steps, "landmarker", precision), best_item_ms(steps, "embedder", precision)
        for side in sorted({s["side"] for s in steps if s["model"] == "detector" and s.get("side")}):
            det = best_item_ms(steps, "detector", precision, side)
            if det is None or lmk is None or emb is None:
                continue
            for k in passes:
                ms = 2 * (det["ms_p50"] / det["batch"] + k * lmk["ms_p50"] / lmk["batch"]
                          + emb["ms_p50"] / emb["batch"])
                out.append({"precision": precision, "detector_side": side, "landmark_passes": k,
                            "model_ms_per_pair": ms, "pairs_per_s": 1000 / ms if ms > 0 else None,
                            "batches": {"detector": det["batch"], "landmarker": lmk["batch"],
                                        "embedder": emb["batch"]}})
    return out


def plan(models: Sequence[str], batches: Sequence[int], precisions: Sequence[str],
         sides: Sequence[int] = DETECTOR_SIDES) -> list[tuple[str, int | None, str, int]]:
    """(model, detector side or None, precision, batch) in the order they are timed: small batches first, so a
    budget that runs out leaves the large ones out, never a whole model."""
    configs = [(m, s) for m in models for s in (sides if m == "detector" else (None,))]
    return [(m, s, p, b) for b in batches for p in precisions for m, s in configs]


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    k = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


# ------------------------------------------------------------------------------------------------ torch side


class Runner:
    """The converted modules on one device, called with a precision mode."""

    def __init__(self, torch: Any, device: str) -> None:
        self.torch, self.device = torch, device
        self.modules: dict[str, Any] = {}

    @contextlib.contextmanager
    def mode(self, precision: str) -> Iterator[None]:
        torch = self.torch
        tf32 = precision == "tf32"
        old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        try:
            with torch.inference_mode():
                if precision == "fp16":
                    # On the CPU, autocast's half type is bfloat16 (a dry run checks the path, not the numbers).
                    dtype = torch.float16 if self.device == "cuda" else torch.bfloat16
                    with torch.autocast(self.device, dtype=dtype):
                        yield
                else:
                    yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old

    def outputs(self, model: str, x: Any) -> dict[str, npt.NDArray[np.float32]]:
        """Named float32 numpy outputs of one call (names as the ONNX graph's)."""
        res = self.modules[model](x)
        if not isinstance(res, (tuple, list)):
            res = (res,)
        names = OUTPUT_NAMES[model]
        return {n: t.float().cpu().numpy() for n, t in zip(names, res, strict=True)}

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()


OUTPUT_NAMES: dict[str, list[str]] = {}


def ort_outputs(path: Path, x: npt.NDArray[np.float32], input_name: str) -> dict[str, npt.NDArray[np.float32]]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {input_name: x})
    return {o.name: np.asarray(v) for o, v in zip(sess.get_outputs(), outs, strict=True)}


def validate(runner: Runner, files: dict[str, Path], images: Sequence[npt.NDArray[np.uint8]],
             precisions: Sequence[str], deadline: float) -> list[dict[str, Any]]:
    """Converted vs onnxruntime CPU on the same photo-cut inputs (detector at 320 and 640, batch 1 and 4)."""
    rows = []
    for model, path in files.items():
        if model not in runner.modules:
            continue
        name = INPUTS[model][0]
        for side in (DETECTOR_SIDES if model == "detector" else (None,)):
            for batch in (1, 4):
                if time.monotonic() > deadline:
                    rows.append({"model": model, "side": side, "batch": batch, "skipped": "budget"})
                    continue
                x = model_input(model, batch, images, side or 640, seed=batch)
                try:
                    ref = ort_outputs(path, x, name)
                except Exception as exc:  # the reference run failing is a finding, not the end of the bench
                    rows.append({"model": model, "side": side, "batch": batch, "error": f"onnxruntime: {exc}"})
                    continue
                for precision in precisions:
                    row: dict[str, Any] = {"model": model, "side": side, "batch": batch, "precision": precision}
                    try:
                        t = runner.torch.from_numpy(x).to(runner.device)
                        with runner.mode(precision):
                            got = runner.outputs(model, t)
                        diffs = compare(ref, got)
                        row.update(ok=faithful(model, precision, diffs), outputs=diffs)
                    except Exception as exc:  # e.g. an op without a half kernel: this precision says so
                        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                    rows.append(row)
    return rows


def time_step(runner: Runner, model: str, x_np: npt.NDArray[np.float32], precision: str, *, warmup: int,
              iters: int, step_s: float) -> dict[str, Any]:
    """Model-only ms per call (device-resident input; CUDA events on a GPU) and one host round trip's ms."""
    torch = runner.torch
    module = runner.modules[model]
    x = torch.from_numpy(x_np).to(runner.device)
    cuda = runner.device == "cuda"
    with runner.mode(precision):
        for _ in range(warmup):
            module(x)
        runner.sync()
        times: list[float] = []
        end_at = time.perf_counter() + step_s
        events = []
        while len(times) + len(events) < iters and time.perf_counter() < end_at:
            if cuda:
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                module(x)
                stop.record()
                events.append((start, stop))
                if len(events) >= 8:  # bounded queue: the clock check above sees real progress
                    stop.synchronize()
                    times += [a.elapsed_time(b) for a, b in events]
                    events = []
            else:
                t0 = time.perf_counter()
                module(x)
                times.append((time.perf_counter() - t0) * 1000)
        runner.sync()
        times += [a.elapsed_time(b) for a, b in events]
        host: list[float] = []
        for _ in range(3):
            t0 = time.perf_counter()
            res = module(torch.from_numpy(x_np).to(runner.device))
            for t in (res if isinstance(res, (tuple, list)) else (res,)):
                t.float().cpu().numpy()
            host.append((time.perf_counter() - t0) * 1000)
    p50 = statistics.median(times)
    batch = int(x_np.shape[0])
    return {"ms_p50": p50, "ms_p90": percentile(times, 90), "ms_mean": statistics.fmean(times),
            "iters": len(times), "items_per_s": batch * 1000 / p50 if p50 > 0 else None,
            "host_ms_p50": statistics.median(host)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + args.budget_s
    report: dict[str, Any] = {"device": args.device, "validate_only": args.validate_only, "conversion": {},
                              "validation": [], "steps": [], "pair_cost": [], "skipped": [], "notes": []}
    try:
        import torch
    except ImportError as exc:
        report["error"] = f"torch not importable: {exc}"
        return report
    report["torch"] = torch.__version__
    if args.device == "cuda" and not torch.cuda.is_available():
        report["error"] = f"torch {torch.__version__} sees no CUDA device"
        return report
    if args.device == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
        torch.backends.cudnn.benchmark = True  # fixed shapes per step: the fastest algorithm is picked at warm-up
    try:
        o2t, stub = import_onnx2torch()
    except Exception as exc:  # any import failure of the converter ends this bench, with its reason
        report["error"] = f"onnx2torch not importable: {type(exc).__name__}: {exc}"
        return report
    from importlib import metadata

    with contextlib.suppress(metadata.PackageNotFoundError):
        report["onnx2torch"] = metadata.version("onnx2torch")
    if stub:
        report["notes"].append(stub)
    del o2t
    import onnx

    runner = Runner(torch, args.device)
    files = {m: args.repository / m / "1" / "model.onnx" for m in args.models}
    for model, path in files.items():
        t0 = time.monotonic()
        if not path.is_file():
            report["conversion"][model] = {"ok": False, "error": f"{path} is missing"}
            continue
        try:
            module, changes = convert(path)
            runner.modules[model] = module.to(args.device)
            OUTPUT_NAMES[model] = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
            report["conversion"][model] = {"ok": True, "seconds": round(time.monotonic() - t0, 2),
                                           "changes": changes}
        except Exception as exc:  # a converter failure on one model leaves the others measured
            report["conversion"][model] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
    images = photos(args.pairs, args.folder)
    report["inputs"] = f"{len(images)} photos" if images else "smooth noise (no photos found)"
    valid_precisions = [p for p in args.precisions if args.device == "cuda" or p != "tf32"]
    report["validation"] = validate(runner, files, images, valid_precisions,
                                    started + args.budget_s * (1.0 if args.validate_only else 0.35))
    if args.validate_only:
        report["elapsed_s"] = time.monotonic() - started
        return report
    for model, side, precision, batch in plan(list(runner.modules), args.batch, args.precisions):
        row: dict[str, Any] = {"model": model, "side": side, "precision": precision, "batch": batch}
        if time.monotonic() + args.step_s + 2 > deadline:
            report["skipped"].append(row)
            continue
        x = model_input(model, batch, images, side or 640, seed=batch)
        try:
            row.update(time_step(runner, model, x, precision, warmup=args.warmup, iters=args.iters,
                                 step_s=args.step_s))
        except Exception as exc:  # e.g. out of memory at a large batch: the step says so, the rest go on
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            if args.device == "cuda":
                torch.cuda.empty_cache()
        report["steps"].append(row)
        log(f"  {model}{f' {side}' if side else ''} {precision} batch {batch}: "
            + (f"{row['ms_p50']:.3f} ms, {row['items_per_s']:.0f} items/s" if "ms_p50" in row else row["error"]))
    report["pair_cost"] = pair_costs(report["steps"])
    if args.device == "cuda":
        report["max_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    report["elapsed_s"] = time.monotonic() - started
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Markdown for gpu_summary.md (bench.gpu_check) and for the console."""
    lines = [f"## Models on {report.get('gpu') or report['device']} through PyTorch "
             f"(torch {report.get('torch', '?')}, onnx2torch {report.get('onnx2torch', '?')})", ""]
    if report.get("error"):
        return [*lines, f"not measured: {report['error']}", ""]
    conv = report.get("conversion", {})
    lines.append("conversion: " + ", ".join(
        f"{m} {'ok' if c.get('ok') else 'FAILED (' + str(c.get('error'))[:120] + ')'}" for m, c in conv.items()))
    checks = [v for v in report.get("validation", []) if "ok" in v]
    if checks:
        lines += ["", "| validation vs onnxruntime CPU | precision | worst rel diff | embedder cosine min | ok |",
                  "|---|---|---:|---:|---|"]
        for v in checks:
            rel = max((o["rel"] for o in v["outputs"].values()), default=0.0)
            cos = min((o["cosine_min"] for o in v["outputs"].values() if "cosine_min" in o), default=None)
            where = f"{v['model']}{' ' + str(v['side']) if v.get('side') else ''} batch {v['batch']}"
            lines.append(f"| {where} | {v['precision']} | {rel:.2e} | "
                         f"{'-' if cos is None or v['model'] != 'embedder' else f'{cos:.6f}'} | "
                         f"{'yes' if v['ok'] else '**no**'} |")
    steps = [s for s in report.get("steps", []) if "ms_p50" in s]
    if steps:
        lines += ["", "| model | precision | batch | ms per call (p50) | items/s | host round trip ms |",
                  "|---|---|---:|---:|---:|---:|"]
        for s in steps:
            name = f"{s['model']}{' ' + str(s['side']) if s.get('side') else ''}"
            lines.append(f"| {name} | {s['precision']} | {s['batch']} | {s['ms_p50']:.3f} | "
                         f"{s['items_per_s']:.0f} | {s['host_ms_p50']:.2f} |")
    if report.get("pair_cost"):
        lines += ["", "| per pair (models only, best batch) | detector side | landmark passes | model ms/pair | "
                  "pairs/s |", "|---|---:|---:|---:|---:|"]
        for c in report["pair_cost"]:
            lines.append(f"| {c['precision']} | {c['detector_side']} | {c['landmark_passes']} | "
                         f"{c['model_ms_per_pair']:.3f} | {c['pairs_per_s']:.0f} |")
    errors = [s for s in [*report.get("validation", []), *report.get("steps", [])] if "error" in s]
    extra = [*report.get("notes", []), *(f"{s['model']} batch {s['batch']} {s.get('precision', '')}: {s['error']}"
                                         for s in errors)]
    if report.get("skipped"):
        extra.append(f"{len(report['skipped'])} timing steps left out (budget)")
    if extra:
        lines += ["", *[f"- {e}" for e in extra]]
    return [*lines, ""]


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_torch", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--out", type=Path, required=True, help="JSON report")
    ap.add_argument("--repository", type=Path, default=REPOSITORY)
    ap.add_argument("--models", type=lambda s: [m for m in s.split(",") if m], default=list(MODELS))
    ap.add_argument("--batch", type=csv_ints, default=list(BATCHES))
    ap.add_argument("--precisions", type=lambda s: [p for p in s.split(",") if p], default=list(PRECISIONS),
                    help="fp32 (TF32 off), fp16 (autocast), tf32")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=200, help="at most this many timed calls per step")
    ap.add_argument("--step-s", type=float, default=0.5, help="at most this many seconds of timed calls per step")
    ap.add_argument("--budget-s", type=float, default=120.0)
    ap.add_argument("--validate-only", action="store_true", help="convert and compare, no timing")
    ap.add_argument("--pairs", type=Path, help="photos for the inputs: a pairs CSV")
    ap.add_argument("--folder", type=Path, help="photos for the inputs: a folder")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = run(args)
    write_json(args.out, report)
    print("\n".join(summary_lines(report)))
    print(f"results: {args.out}")
    return 1 if report.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
