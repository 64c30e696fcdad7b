"""Verification accuracy on labelled pairs: accuracy at the threshold, ROC AUC, EER, TAR@FAR, best threshold.

    python -m bench.accuracy --pairs ../shared/lfw-dev/pairs.csv
    python -m bench.accuracy --pairs P.csv --labels ../shared/lfw-dev/LABELS.csv   # + all-pairs FAR calibration
    python -m bench.accuracy --pairs P.csv --url http://127.0.0.1:8000 --token "$TOKEN"   # through a server

Writes ``bench/results/accuracy.json`` and, when matplotlib is installed, ``bench/results/accuracy_roc.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from server.analysis.calibration import ScoreCalibration
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAIRS = ROOT.parent / "shared" / "lfw-dev" / "pairs.csv"
RESULTS = ROOT / "bench" / "results"


def read_pairs(path: Path) -> list[tuple[str, str, int]]:
    with path.open(newline="") as f:
        return [(r["file1"], r["file2"], int(r["same"])) for r in csv.DictReader(f)]


def roc(scores: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """ROC curve, AUC, EER and TAR at fixed FARs for scores where higher means 'same'."""
    order = np.argsort(-scores, kind="mergesort")
    y = labels[order]
    pos, neg = max(int(y.sum()), 1), max(int((1 - y).sum()), 1)
    tpr = np.concatenate([[0.0], np.cumsum(y) / pos])
    fpr = np.concatenate([[0.0], np.cumsum(1 - y) / neg])
    auc = float(np.trapezoid(tpr, fpr))
    fnr = 1 - tpr
    i = int(np.argmin(np.abs(fnr - fpr)))
    out: dict[str, object] = {"auc": auc, "eer": float((fnr[i] + fpr[i]) / 2), "negatives": neg, "positives": pos}
    for far in (1e-2, 1e-3, 1e-4):
        # Only report a FAR the negatives can resolve (at least 10 impostors above the threshold).
        if neg * far >= 10 or (far == 1e-2 and neg >= 100):
            ok = fpr <= far
            out[f"tar_at_far_{far:g}"] = float(tpr[ok].max()) if ok.any() else 0.0
            k = max(int(np.floor(far * neg)), 0)
            out[f"threshold_at_far_{far:g}"] = float(np.sort(scores[labels == 0])[::-1][min(k, neg - 1)])
    out["curve"] = {"fpr": fpr[:: max(1, len(fpr) // 400)].tolist(), "tpr": tpr[:: max(1, len(tpr) // 400)].tolist()}
    return out


def best_threshold(cos: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    u = np.unique(cos)
    # Candidates between consecutive scores, so no pair sits exactly on a threshold.
    grid = np.concatenate([[u[0] - 1e-6], (u[:-1] + u[1:]) / 2, [u[-1] + 1e-6]])
    accs = [float(((cos >= t) == labels).mean()) for t in grid]
    i = int(np.argmax(accs))
    return float(grid[i]), accs[i]


async def embed_local(files: list[str], root: Path, settings: Settings, batch: int = 16
                      ) -> tuple[dict[str, np.ndarray | None], float, str]:
    from server.inference.backend import MODEL_NAMES
    from server.inference.batched import DirectRunner
    from server.inference.context import INTERNAL
    from server.inference.decode import DecodeLimits, decode_image
    from server.inference.onnxrt import OnnxRuntimeBackend
    from server.inference.pipeline import FacePipeline
    from server.runtime import pipeline_config

    backend = OnnxRuntimeBackend(settings.model_repository, intra_threads=settings.ort_intra_threads,
                                 precision=settings.precision)
    pipe = FacePipeline(DirectRunner(backend), {m: backend.spec(m) for m in MODEL_NAMES}, pipeline_config(settings))
    limits = DecodeLimits(settings.max_image_pixels, settings.min_image_side, settings.max_image_side)
    out: dict[str, np.ndarray | None] = {}
    t0 = time.perf_counter()
    for i in range(0, len(files), batch):
        chunk = files[i : i + batch]
        imgs = [decode_image((root / f).read_bytes(), limits) for f in chunk]
        for f, r in zip(chunk, await pipe.analyze(imgs, INTERNAL), strict=True):
            out[f] = None if r is None else r.embedding
        print(f"\r  embedded {min(i + batch, len(files))}/{len(files)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    await backend.aclose()
    return out, time.perf_counter() - t0, backend.description


def score_via_server(pairs: list[tuple[str, str, int]], root: Path, url: str, token: str) -> list[float | None]:
    import httpx

    sims: list[float | None] = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        for n, (a, b, _) in enumerate(pairs):
            files = {"file1": (a, (root / a).read_bytes()), "file2": (b, (root / b).read_bytes())}
            r = client.post("/v1/compare_face", data={"channel": "OTHER", "reference": f"bench-{n}"}, files=files)
            sims.append(r.json()["compare_similarity"] if r.status_code == 200 else None)
            print(f"\r  {n + 1}/{len(pairs)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    return sims


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS)
    ap.add_argument("--root", type=Path, help="image root (default: the pairs file's folder)")
    ap.add_argument("--labels", type=Path, help="file,identity CSV: also score all impostor/genuine pairs")
    ap.add_argument("--url", help="score through a running server instead of in-process")
    ap.add_argument("--token", help="bearer token for --url")
    ap.add_argument("--out", type=Path, default=RESULTS / "accuracy.json")
    ap.add_argument("--limit", type=int, help="only the first N pairs (a quick check)")
    args = ap.parse_args(argv)
    settings = Settings.from_env()
    calib = ScoreCalibration()
    root = args.root or args.pairs.parent
    pairs = read_pairs(args.pairs)[: args.limit or None]
    labels = np.array([p[2] for p in pairs])
    report: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.processor() or platform.machine(),
        "pairs_file": str(args.pairs), "pairs": len(pairs), "threshold": settings.threshold,
        "threshold_cosine": calib.cosine(settings.threshold),
    }
    if args.url:
        if not args.token:
            ap.error("--url needs --token")
        sims = score_via_server(pairs, root, args.url, args.token)
        failures = [i for i, s in enumerate(sims) if s is None]
        cos = np.array([calib.cosine(s) if s is not None else -1.0 for s in sims])
        report["mode"] = "server"
    else:
        files = sorted({f for p in pairs for f in p[:2]})
        extra: list[str] = []
        ident: dict[str, str] = {}
        if args.labels:
            with args.labels.open(newline="") as f:
                ident = {r["file"]: r["identity"] for r in csv.DictReader(f)}
            extra = sorted(set(ident) - set(files))
        emb, secs, description = asyncio.run(embed_local(files + extra, root, settings))
        report["mode"] = "in-process"
        report["backend"] = description  # names the int8 models when FACEREC_PRECISION resolved to int8
        report["images"] = len(emb)
        report["images_per_s"] = len(emb) / secs
        failures = [i for i, (a, b, _) in enumerate(pairs) if emb[a] is None or emb[b] is None]
        cos = np.array([-1.0 if (ea := emb[a]) is None or (eb := emb[b]) is None else float(ea @ eb)
                        for a, b, _ in pairs])
        if ident:
            keys = [k for k in ident if emb.get(k) is not None]
            m = np.stack([emb[k] for k in keys])  # type: ignore[misc]
            ids = np.array([ident[k] for k in keys])
            sim = m @ m.T
            iu = np.triu_indices(len(keys), 1)
            same = (ids[:, None] == ids[None])[iu]
            allc = sim[iu]
            t = calib.cosine(settings.threshold)
            sweep = []
            for tc in (0.30, 0.33, 0.363, 0.37, 0.38, 0.39, 0.40, 0.41, 0.42, 0.45):
                sweep.append({"cosine": tc, "similarity": calib.similarity(tc),
                              "pairs_accuracy": float(((cos >= tc) == labels).mean()),
                              "far_all": float((allc[~same] >= tc).mean()), "frr_all": float((allc[same] < tc).mean())})
                print(f"  cosine {tc:.3f}: pairs accuracy {sweep[-1]['pairs_accuracy']:.4f}  FAR(all) "
                      f"{sweep[-1]['far_all']:.5f}  FRR(all) {sweep[-1]['frr_all']:.4f}")
            report["sweep"] = sweep
            report["all_pairs"] = {
                "genuine": int(same.sum()), "impostor": int((~same).sum()),
                "far_at_threshold": float((allc[~same] >= t).mean()),
                "frr_at_threshold": float((allc[same] < t).mean()),
                **{k: v for k, v in roc(allc, same.astype(int)).items() if k != "curve"},
            }
    t = calib.cosine(settings.threshold)
    pred = cos >= t
    best_t, best_acc = best_threshold(cos, labels)
    r = roc(cos, labels)
    report.update({
        "failures_no_face": len(failures), "accuracy_at_threshold": float((pred == labels).mean()),
        "false_accepts": int((pred & (labels == 0)).sum()), "false_rejects": int((~pred & (labels == 1)).sum()),
        "best_threshold_cosine": best_t, "best_threshold_similarity": calib.similarity(best_t),
        "best_accuracy": best_acc, **{k: v for k, v in r.items() if k != "curve"},
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**report, "roc_curve": r["curve"]}, indent=2))
    print(f"pairs {len(pairs)}  no-face failures {len(failures)}")
    print(f"accuracy at threshold {settings.threshold} (cosine {t:.3f}): {report['accuracy_at_threshold']:.4f}"
          f"  (FA {report['false_accepts']}, FR {report['false_rejects']})")
    print(f"ROC AUC {r['auc']:.5f}  EER {r['eer']:.4f}  best threshold cosine {best_t:.3f} -> accuracy {best_acc:.4f}")
    for k in ("tar_at_far_0.01", "tar_at_far_0.001"):
        if k in r:
            print(f"{k}: {r[k]:.4f}")
    if "all_pairs" in report:
        ap_ = report["all_pairs"]
        assert isinstance(ap_, dict)
        print(f"all pairs: {ap_['genuine']} genuine, {ap_['impostor']} impostor; at the threshold FAR "
              f"{ap_['far_at_threshold']:.5f}, FRR {ap_['frr_at_threshold']:.4f}; "
              f"TAR@FAR0.1% {ap_.get('tar_at_far_0.001')}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4))
        curve = r["curve"]
        assert isinstance(curve, dict)
        ax.plot(curve["fpr"], curve["tpr"])
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlabel("false accept rate")
        ax.set_ylabel("true accept rate")
        ax.set_title(f"ROC on {args.pairs.name} (AUC {r['auc']:.4f})")
        fig.tight_layout()
        fig.savefig(args.out.with_name(args.out.stem + "_roc.png"), dpi=110)
    except ImportError:
        print("(matplotlib not installed: no ROC plot; `make bench` installs it)", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
