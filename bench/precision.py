"""fp32 vs int8 embedder: ms per image at batch 1 and 16 with 1 and 2 threads, and how close the embeddings are.

    python -m bench.precision                               # crops of ../shared/faces, results/precision.json
    python -m bench.precision --folder ../shared/lfw-dev/lfw --recursive --limit 100

Both files of ``model_repository/embedder/1/`` run on the same aligned face crops (made by the fp32 pipeline from
the photos) in one process. Speed: for every (threads, batch) cell the two precisions alternate in short rounds, so
load from other processes hits both alike; each cell reports CPU time of this process per image (all its
threads; the steadier number on a shared machine) and wall time per image, medians over the rounds (and the
fastest round, the least disturbed one), plus the machine's load average and the cores other processes used
meanwhile. Closeness: cosine of each face's int8 embedding to its fp32 embedding (min and mean).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.calibrate import aligned_faces, embed
from bench.common import DEFAULT_FACES, RESULTS, CpuMeter, folder_images, machine_info, table, write_json


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _round(sess: Any, batches: list[np.ndarray]) -> tuple[float, float]:
    """CPU and wall seconds per image over one pass of ``batches``."""
    images = sum(len(b) for b in batches)
    c0, w0 = time.process_time(), time.perf_counter()
    for b in batches:
        sess.run(None, {"data": b})
    return (time.process_time() - c0) / images, (time.perf_counter() - w0) / images


def speed(files: dict[str, Path], faces: np.ndarray, *, threads: list[int], batches: list[int],
          rounds: int, images_per_round: int) -> list[dict[str, Any]]:
    rows = []
    for t in threads:
        sessions = {p: _session(f, t) for p, f in files.items()}
        for bs in batches:
            n = max(bs, images_per_round // bs * bs)
            idx = np.arange(n) % len(faces)
            chunks = [faces[idx[i : i + bs]] for i in range(0, n, bs)]
            for sess in sessions.values():  # warm-up: first runs allocate and pick kernels
                _round(sess, chunks[:2])
            samples: dict[str, list[tuple[float, float]]] = {p: [] for p in files}
            meter = CpuMeter()
            load0 = os.getloadavg()[0]
            for r in range(rounds):
                order = list(files) if r % 2 == 0 else list(files)[::-1]
                for p in order:
                    samples[p].append(_round(sessions[p], chunks))
            cores = meter.read()
            row: dict[str, Any] = {"threads": t, "batch": bs, "load_avg_1m": [load0, os.getloadavg()[0]],
                                   "other_cpu_cores": cores["other_cpu_cores"]}
            for p, vals in samples.items():
                row[f"{p}_cpu_ms"] = statistics.median(v[0] for v in vals) * 1e3
                row[f"{p}_wall_ms"] = statistics.median(v[1] for v in vals) * 1e3
                # The fastest round: the least disturbed by other processes on a shared machine.
                row[f"{p}_cpu_ms_min"] = min(v[0] for v in vals) * 1e3
                row[f"{p}_wall_ms_min"] = min(v[1] for v in vals) * 1e3
            if "int8" in files and "fp32" in files:
                row["cpu_speedup"] = row["fp32_cpu_ms"] / row["int8_cpu_ms"]
                row["wall_speedup"] = row["fp32_wall_ms"] / row["int8_wall_ms"]
                row["cpu_speedup_min"] = row["fp32_cpu_ms_min"] / row["int8_cpu_ms_min"]
                row["wall_speedup_min"] = row["fp32_wall_ms_min"] / row["int8_wall_ms_min"]
            rows.append(row)
            print(f"  threads {t} batch {bs}: " + ", ".join(
                f"{p} cpu {row[f'{p}_cpu_ms']:.2f} wall {row[f'{p}_wall_ms']:.2f} ms" for p in files), file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    from server.inference.precision import MODEL_FILES
    from server.settings import Settings

    ap = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__.split("\n")[0])
    ap.add_argument("--folder", type=Path, default=DEFAULT_FACES, help="photos to crop faces from")
    ap.add_argument("--recursive", action="store_true")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds per cell (median reported)")
    ap.add_argument("--images", type=int, default=48, help="images per round")
    ap.add_argument("--out", type=Path, default=RESULTS / "precision.json")
    args = ap.parse_args(argv)
    settings = Settings.from_env()
    repo = settings.model_repository
    files = {p: repo / "embedder" / "1" / f for p, f in MODEL_FILES.items()}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        print(f"error: {', '.join(missing)} missing: run `facerec models`", file=sys.stderr)
        return 2
    photos = folder_images(args.folder, recursive=args.recursive, limit=args.limit)
    faces = aligned_faces(photos, repo)
    if not len(faces):
        print("error: no faces found", file=sys.stderr)
        return 2
    fp32, int8 = (embed(f.read_bytes(), faces) for f in files.values())
    cos = (fp32 * int8).sum(1)
    print(f"{len(faces)} faces from {len(photos)} photos: int8 vs fp32 cosine min {cos.min():.4f} "
          f"mean {cos.mean():.5f}", file=sys.stderr)
    rows = speed(files, faces, threads=[int(x) for x in args.threads.split(",")],
                 batches=[int(x) for x in args.batches.split(",")], rounds=args.rounds,
                 images_per_round=args.images)
    report = {"machine": machine_info(), "folder": str(args.folder), "photos": len(photos), "faces": len(faces),
              "cosine_int8_fp32": {"min": float(cos.min()), "mean": float(cos.mean())},
              "files": {p: f.name for p, f in files.items()}, "speed": rows}
    write_json(args.out, report)
    print(table([[r["threads"], r["batch"], r["fp32_cpu_ms"], r["int8_cpu_ms"], r["cpu_speedup"],
                  r["fp32_wall_ms"], r["int8_wall_ms"], r["wall_speedup"], r["load_avg_1m"][1],
                  r["other_cpu_cores"]] for r in rows],
                ["threads", "batch", "fp32 cpu ms", "int8 cpu ms", "cpu x", "fp32 wall ms", "int8 wall ms",
                 "wall x", "load 1m", "other cores"]))
    print(table([[r["threads"], r["batch"], r["fp32_cpu_ms_min"], r["int8_cpu_ms_min"], r["cpu_speedup_min"],
                  r["fp32_wall_ms_min"], r["int8_wall_ms_min"], r["wall_speedup_min"]] for r in rows],
                ["threads", "batch", "fp32 cpu min", "int8 cpu min", "cpu x", "fp32 wall min", "int8 wall min",
                 "wall x"]))
    print(f"cosine int8 vs fp32 over {len(faces)} faces: min {cos.min():.4f}, mean {cos.mean():.5f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
