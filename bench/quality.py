"""What each ``quality_filter`` level refuses and what it does to FAR/FRR; what ``threshold`` means as a FAR.

    python -m bench.quality                 # ../shared/lfw-dev + ../shared/faces -> bench/results/quality.json
    python -m bench.quality --limit 120     # a quicker look on the first 120 LFW images

Sets of images, each analysed in-process by the shipped pipeline (``FacePipeline``, onnxruntime CPU):

- ``lfw``: the LFW dev images as they are (250x250 crops, good light, mostly frontal: "selfies");
- ``faces``: the public-domain photos of ``../shared/faces`` (portraits, a partial face, a small face);
- degraded copies of every LFW image, made here (nothing is written to disk), the ways ID documents and selfies go
  wrong: ``card`` (the photo shrunk onto a 640x400 card so the eyes are 9-36 px apart), ``blur`` (Gaussian,
  sigma 1-4 px), ``dark`` / ``bright`` (exposure down / up), ``covered`` (the lower 25-55 % of the face covered).

Reported per level (NONE, LOW, MEDIUM, HIGH): the share of each set's faces refused (and by which component), the
FAR/FRR over all LFW pairs both of whose faces pass, and for each degraded set the FAR/FRR of "degraded photo of A
vs original of B" pairs (the document-vs-selfie case) among the pairs the level lets through. Plus the threshold
table: FAR and FRR over all LFW pairs for ``threshold`` values on the ``compare_similarity`` scale.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import pickle
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from bench.common import RESULTS, SHARED, machine_info, table, write_json
from server.analysis.calibration import ScoreCalibration
from server.analysis.quality import LEVEL_MINIMUMS, shortfalls
from server.domain import QualityFilter
from server.settings import Settings

RGB = npt.NDArray[np.uint8]
LEVELS = (QualityFilter.NONE, QualityFilter.LOW, QualityFilter.MEDIUM, QualityFilter.HIGH)
THRESHOLDS = (0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80)
# Each degraded image gets the next parameter of its set's cycle (image i -> params[i % len]).
CARD_EYE_PX = (9.0, 12.0, 15.0, 18.0, 21.0, 24.0, 30.0, 36.0)
BLUR_SIGMA = (1.0, 1.5, 2.0, 3.0, 4.0)
DARK_GAIN = (0.45, 0.3, 0.2, 0.12, 0.07)
BRIGHT_GAIN = (0.45, 0.3, 0.2, 0.12, 0.07)
COVER_SHARE = (0.25, 0.35, 0.45, 0.55)
CARD_SIZE = (400, 640)  # h, w: a photo ID scanned at about 250 dpi


@dataclass(frozen=True, slots=True)
class Face:
    components: Any  # QualityComponents
    embedding: npt.NDArray[np.float32]
    box: tuple[int, int, int, int]
    eye_dist: float


async def analyse(images: list[RGB], settings: Settings, batch: int = 16, desc: str = "") -> list[Face | None]:
    from server.inference.backend import MODEL_NAMES
    from server.inference.batched import DirectRunner
    from server.inference.context import INTERNAL
    from server.inference.onnxrt import OnnxRuntimeBackend
    from server.inference.pipeline import FacePipeline
    from server.runtime import pipeline_config

    backend = OnnxRuntimeBackend(settings.model_repository, intra_threads=settings.ort_intra_threads,
                                 precision=settings.precision)
    pipe = FacePipeline(DirectRunner(backend), {m: backend.spec(m) for m in MODEL_NAMES}, pipeline_config(settings))
    out: list[Face | None] = []
    try:
        for i in range(0, len(images), batch):
            for r in await pipe.analyze(images[i: i + batch], INTERNAL):
                if r is None:
                    out.append(None)
                    continue
                a = r.analysis
                out.append(Face(a.quality_components, r.embedding, (a.x1, a.y1, a.x2, a.y2), a.eye_dist))
            print(f"\r  {desc}: {len(out)}/{len(images)}", end="", file=sys.stderr)
        print(file=sys.stderr)
    finally:
        await backend.aclose()
    return out


def load_rgb(path: Path) -> RGB:
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        return np.ascontiguousarray(np.asarray(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.uint8))


# ----------------------------------------------------------------------------------------------- degradations


def card(img: RGB, eye_dist: float, target: float) -> RGB:
    """The photo shrunk so its eyes are ``target`` px apart, pasted on a grey 640x400 card (left third)."""
    scale = min(1.0, target / max(eye_dist, 1.0))
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    canvas = np.full((*CARD_SIZE, 3), 205, dtype=np.uint8)
    y0, x0 = (CARD_SIZE[0] - small.shape[0]) // 2, 40
    canvas[y0: y0 + small.shape[0], x0: x0 + small.shape[1]] = small
    return canvas


def blur(img: RGB, sigma: float) -> RGB:
    return np.asarray(cv2.GaussianBlur(img, (0, 0), sigma), dtype=np.uint8)


def dark(img: RGB, gain: float) -> RGB:
    return np.clip(img.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def bright(img: RGB, gain: float) -> RGB:
    return (255 - np.clip((255 - img.astype(np.float32)) * gain, 0, 255)).astype(np.uint8)


def covered(img: RGB, box: tuple[int, int, int, int], share: float) -> RGB:
    """The lower ``share`` of the face box covered by a flat dark-blue patch (a scarf, a mask, a hand)."""
    x1, y1, x2, y2 = box
    out = img.copy()
    top = round(y2 - (y2 - y1) * share)
    out[max(0, top): max(0, y2), max(0, x1): max(0, x2)] = (30, 40, 90)
    return out


# ----------------------------------------------------------------------------------------------- measures


def rates(cos: npt.NDArray[np.float64], same: npt.NDArray[np.bool_], keep: npt.NDArray[np.bool_],
          threshold_cos: float) -> dict[str, float | int]:
    """FAR / FRR at ``threshold_cos`` among the kept pairs, and how many pairs of each kind were kept."""
    gen, imp = same & keep, ~same & keep
    return {
        "genuine_kept": int(gen.sum()), "impostor_kept": int(imp.sum()),
        "genuine_refused_share": float(1 - gen.sum() / max(same.sum(), 1)),
        "impostor_refused_share": float(1 - imp.sum() / max((~same).sum(), 1)),
        "far": float((cos[imp] >= threshold_cos).mean()) if imp.any() else 0.0,
        "frr": float((cos[gen] < threshold_cos).mean()) if gen.any() else 0.0,
        # Of the genuine pairs, how many end as "Same person" (accepted by the gate and above the threshold).
        "tar_overall": float((gen & (cos >= threshold_cos)).sum() / max(same.sum(), 1)),
    }


def refusals(faces: list[Face | None]) -> dict[str, Any]:
    found = [f for f in faces if f is not None]
    out: dict[str, Any] = {"images": len(faces), "no_face": len(faces) - len(found)}
    for level in LEVELS:
        why: Counter[str] = Counter()
        refused = 0
        for f in found:
            short = shortfalls(f.components, level)
            refused += bool(short)
            why.update(s.component for s in short)
        out[level.value] = {"refused": refused, "refused_share": refused / max(len(found), 1),
                            "by_component": dict(why)}
    return out


def passing(faces: list[Face | None], level: QualityFilter) -> npt.NDArray[np.bool_]:
    return np.array([f is not None and not shortfalls(f.components, level) for f in faces])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n")[0])
    ap.add_argument("--lfw", type=Path, default=SHARED / "lfw-dev", help="folder with LABELS.csv and pairs.csv")
    ap.add_argument("--faces", type=Path, default=SHARED / "faces")
    ap.add_argument("--limit", type=int, help="only the first N LFW images")
    ap.add_argument("--out", type=Path, default=RESULTS / "quality.json")
    ap.add_argument("--cache", type=Path, help="keep the analyses in this file (re-scoring changed levels is then "
                    "instant; delete it after changing the pipeline)")
    args = ap.parse_args(argv)
    settings = Settings.from_env()
    calib = ScoreCalibration()
    t_cos = calib.cosine(settings.threshold)
    started = time.perf_counter()

    with (args.lfw / "LABELS.csv").open(newline="") as f:
        labels = [(r["file"], r["identity"]) for r in csv.DictReader(f)][: args.limit or None]
    files = [name for name, _ in labels]
    ids = np.array([ident for _, ident in labels])
    originals = [load_rgb(args.lfw / name) for name in files]
    photo_paths = sorted(p for p in args.faces.glob("*.jpg") if not p.name.startswith("no_face"))
    cached: dict[str, Any] = {}
    if args.cache and args.cache.is_file():
        cached = pickle.loads(args.cache.read_bytes())  # a file this tool wrote itself
        if cached.get("files") != files:
            cached = {}
    lfw = cached.get("lfw") or asyncio.run(analyse(originals, settings, desc="lfw"))
    photos = cached.get("photos") or asyncio.run(analyse([load_rgb(p) for p in photo_paths], settings,
                                                         desc="faces"))

    usable = [i for i, f in enumerate(lfw) if f is not None]
    variants: dict[str, tuple[list[int], list[float], list[RGB]]] = {}
    for name, params, make in (
        ("card", CARD_EYE_PX, lambda i, p: card(originals[i], lfw[i].eye_dist, p)),  # type: ignore[union-attr]
        ("blur", BLUR_SIGMA, lambda i, p: blur(originals[i], p)),
        ("dark", DARK_GAIN, lambda i, p: dark(originals[i], p)),
        ("bright", BRIGHT_GAIN, lambda i, p: bright(originals[i], p)),
        ("covered", COVER_SHARE, lambda i, p: covered(originals[i], lfw[i].box, p)),  # type: ignore[union-attr]
    ):
        chosen = [params[k % len(params)] for k in range(len(usable))]
        variants[name] = (usable, chosen, [make(i, p) for i, p in zip(usable, chosen, strict=True)])
    degraded = cached.get("degraded") or {name: asyncio.run(analyse(imgs, settings, desc=name))
                                          for name, (_, _, imgs) in variants.items()}
    if args.cache and not cached:
        args.cache.write_bytes(pickle.dumps({"files": files, "lfw": lfw, "photos": photos, "degraded": degraded}))

    report: dict[str, Any] = {"machine": machine_info(), "precision": settings.precision,
                              "threshold": settings.threshold, "threshold_cosine": t_cos, "lfw_images": len(files),
                              "faces_photos": len(photo_paths),
                              "levels": {lv.value: LEVEL_MINIMUMS[lv] for lv in LEVELS}}
    report["refusals"] = {"lfw": refusals(lfw), "faces": refusals(photos),
                          **{name: refusals(faces) for name, faces in degraded.items()}}
    report["faces_detail"] = {
        p.name: None if f is None else {
            "components": f.components.as_dict(),
            "refused_at": [lv.value for lv in LEVELS if shortfalls(f.components, lv)],
        } for p, f in zip(photo_paths, photos, strict=True)}

    # All LFW pairs (originals): embeddings of the images with a face.
    emb = np.stack([f.embedding if f is not None else np.zeros(128, np.float32) for f in lfw]).astype(np.float64)
    has = np.array([f is not None for f in lfw])
    iu = np.triu_indices(len(lfw), 1)
    cos_all = (emb @ emb.T)[iu]
    same_all = (ids[:, None] == ids[None, :])[iu]
    both = (has[:, None] & has[None, :])[iu]
    report["lfw_pairs"] = {}
    for level in LEVELS:
        ok = passing(lfw, level)
        keep = (ok[:, None] & ok[None, :])[iu] & both
        report["lfw_pairs"][level.value] = rates(cos_all, same_all, keep, t_cos)
    report["threshold_table"] = [
        {"threshold": t, "cosine": calib.cosine(t),
         **{k: v for k, v in rates(cos_all, same_all, both, calib.cosine(t)).items()
            if k in ("far", "frr")}} for t in THRESHOLDS]
    report["impostor_pairs"] = int((~same_all & both).sum())
    report["genuine_pairs"] = int((same_all & both).sum())

    # Degraded photo of A vs original of B: the ID-document-vs-selfie case, per level and per degradation step.
    report["degraded_vs_original"] = {}
    for name, faces in degraded.items():
        idx, params, _ = variants[name]
        d_emb = np.stack([f.embedding if f is not None else np.zeros(128, np.float32) for f in faces])
        cos = d_emb.astype(np.float64) @ emb.T  # (degraded, originals)
        not_self = np.array(idx)[:, None] != np.arange(len(lfw))[None, :]
        same = (ids[np.array(idx)][:, None] == ids[None, :]) & not_self
        valid = not_self & np.array([f is not None for f in faces])[:, None] & has[None, :]
        per_level = {}
        for level in LEVELS:
            keep = valid & passing(faces, level)[:, None] & passing(lfw, level)[None, :]
            per_level[level.value] = rates(cos.ravel(), same.ravel(), keep.ravel(), t_cos)
        steps = {}
        for p in sorted(set(params)):
            rows = np.array([q == p for q in params])
            found = [faces[k] for k in np.flatnonzero(rows)]
            step: dict[str, Any] = {"images": int(rows.sum()),
                                    "no_face": sum(f is None for f in found)}
            sub_keep = valid & rows[:, None]
            step["frr_no_filter"] = rates(cos.ravel(), same.ravel(), sub_keep.ravel(), t_cos)["frr"]
            for level in LEVELS[1:]:
                step[f"refused_{level.value}"] = sum(
                    1 for f in found if f is not None and shortfalls(f.components, level)) / max(
                    sum(f is not None for f in found), 1)
            steps[str(p)] = step
        report["degraded_vs_original"][name] = {"per_level": per_level, "per_step": steps}
    report["seconds"] = time.perf_counter() - started
    write_json(args.out, report)

    # ------------------------------------------------------------------ the README tables
    sets = ["lfw", "faces", *degraded]
    print("\nShare of faces refused (no-face images excluded):")
    print(table([[lv.value, *(f"{report['refusals'][s][lv.value]['refused_share']:.1%}" for s in sets)]
                 for lv in LEVELS[1:]], ["level", *sets]))
    print("\nLFW all pairs (both faces pass), at threshold "
          f"{settings.threshold}: FAR / FRR / genuine pairs refused:")
    print(table([[lv.value, f"{r['far']:.4%}", f"{r['frr']:.2%}", f"{r['genuine_refused_share']:.1%}",
                  f"{r['impostor_refused_share']:.1%}"]
                 for lv, r in ((lv, report["lfw_pairs"][lv.value]) for lv in LEVELS)],
                ["level", "FAR", "FRR", "genuine refused", "impostor refused"]))
    print("\nDegraded photo of A vs original of B: FRR among accepted pairs / genuine pairs refused / FAR:")
    rows = []
    for name in degraded:
        per = report["degraded_vs_original"][name]["per_level"]
        rows.append([name, *(f"{per[lv.value]['frr']:.1%} / {per[lv.value]['genuine_refused_share']:.0%} / "
                             f"{per[lv.value]['far']:.3%}" for lv in LEVELS)])
    print(table(rows, ["set", *(lv.value for lv in LEVELS)]))
    for name in degraded:
        steps = report["degraded_vs_original"][name]["per_step"]
        print(f"\n{name}: per step (FRR without filter, refused share per level):")
        print(table([[p, s["images"], s["no_face"], f"{s['frr_no_filter']:.1%}",
                      *(f"{s[f'refused_{lv.value}']:.0%}" for lv in LEVELS[1:])] for p, s in steps.items()],
                    ["param", "images", "no face", "FRR", *(lv.value for lv in LEVELS[1:])]))
    print("\nthreshold -> FAR / FRR over all LFW pairs:")
    print(table([[f"{r['threshold']:.2f}", f"{r['cosine']:.3f}", f"{r['far']:.4%}", f"{r['frr']:.2%}"]
                 for r in report["threshold_table"]], ["threshold", "cosine", "FAR", "FRR"]))
    print("\nshared photos:")
    for name, d in report["faces_detail"].items():
        print(f"  {name}: " + ("no face" if d is None else
                               " ".join(f"{k}={v:.2f}" for k, v in d["components"].items())
                               + f"  refused at {d['refused_at']}"))
    print(f"\nwrote {args.out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
