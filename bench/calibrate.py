"""Measure the activation ranges of the int8 embedder on real aligned faces and write the calibration table.

    python -m bench.calibrate                     # ../shared/lfw-dev images -> server/modelrepo/calibration/
    python -m bench.calibrate --percentile 99.99 --out /tmp/table.json

Run once, offline; the table (numbers only, no images) is committed and ``facerec models`` applies it, so the
build needs no photos. How: every LFW dev image goes through the fp32 pipeline (detector, landmarks, alignment)
and the 112x112 crops the embedder would see are kept; the float graph that the build quantizes
(``server.modelrepo.embedder.int8_float_graph``) runs on them with every tensor to be quantized as an extra output,
and each tensor's range is its two-sided ``--percentile`` over all its values (exact: the running top-k/bottom-k,
not a sample). The tail cut matters: min/max ranges are ~3x wider than 99.999 % here and cost accuracy.
It then quantizes in memory and reports the cosine of int8 to fp32 embeddings, also 2-fold (ranges from one
half of the faces, cosines on the other) to show the ranges do not fit only the faces they came from.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.common import ROOT, SHARED

DEFAULT_LABELS = SHARED / "lfw-dev" / "LABELS.csv"
NDF = npt.NDArray[np.float32]


def image_files(labels: Path) -> list[Path]:
    """The images listed in a ``file,identity`` CSV, as paths."""
    with labels.open(newline="") as f:
        return [labels.parent / r["file"] for r in csv.DictReader(f)]


def aligned_faces(paths: list[Path], repository: Path, *, batch: int = 16) -> NDF:
    """The embedder inputs ``(N, 3, 112, 112)`` (RGB 0..255) of the most prominent face of each image that has
    one, as the fp32 pipeline aligns them."""
    from server.inference.backend import MODEL_NAMES
    from server.inference.context import INTERNAL
    from server.inference.decode import DecodeLimits, decode_image
    from server.inference.onnxrt import OnnxRuntimeBackend
    from server.inference.pipeline import FacePipeline, PipelineConfig

    backend = OnnxRuntimeBackend(repository, device="cpu", precision="fp32")
    crops: list[NDF] = []

    class Capture:
        """Runner that keeps what the pipeline sends to the embedder."""

        async def infer(self, model: str, inputs: dict[str, NDF], *args: Any, **kwargs: Any) -> dict[str, NDF]:
            if model == "embedder":
                crops.append(next(iter(inputs.values())).copy())
            return await backend.infer(model, inputs)

    pipeline = FacePipeline(Capture(), {m: backend.spec(m) for m in MODEL_NAMES}, PipelineConfig())  # type: ignore[arg-type]
    limits = DecodeLimits(40_000_000, 32, 20_000)

    async def run() -> None:
        for i in range(0, len(paths), batch):
            images = [decode_image(p.read_bytes(), limits) for p in paths[i : i + batch]]
            await pipeline.analyze(images, INTERNAL)
            print(f"\r  aligned {min(i + batch, len(paths))}/{len(paths)}", end="", file=sys.stderr)
        print(file=sys.stderr)
        await backend.aclose()

    asyncio.run(run())
    return np.concatenate(crops) if crops else np.zeros((0, 3, 112, 112), np.float32)


def activation_ranges(model_bytes: bytes, tensors: list[str], faces: NDF, percentile: float,
                      *, batch: int = 16) -> dict[str, tuple[float, float]]:
    """Two-sided ``percentile`` of every tensor over all its values on ``faces`` (exact, via running top-k)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load_model_from_string(model_bytes)
    outputs = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in outputs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    low: dict[str, NDF] = {}
    high: dict[str, NDF] = {}
    ks: dict[str, int] = {}
    for i in range(0, len(faces), batch):
        values = sess.run(tensors, {"data": faces[i : i + batch]})
        for name, v in zip(tensors, values, strict=True):
            flat = v.reshape(-1)
            if name not in ks:  # k values beyond the percentile, from the total count known up front
                ks[name] = max(1, int(flat.size // len(v) * len(faces) * (100.0 - percentile) / 100.0))
            k = min(ks[name], flat.size)
            lows = np.concatenate([low.get(name, flat[:0]), np.partition(flat, k - 1)[:k]])
            highs = np.concatenate([high.get(name, flat[:0]), np.partition(flat, flat.size - k)[-k:]])
            low[name] = np.partition(lows, ks[name] - 1)[: ks[name]] if lows.size > ks[name] else lows
            high[name] = np.partition(highs, highs.size - ks[name])[-ks[name]:] if highs.size > ks[name] else highs
    return {name: (float(low[name].max()), float(high[name].min())) for name in tensors}


def embed(model_bytes: bytes, faces: NDF) -> NDF:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    out = np.concatenate([sess.run(None, {"data": faces[i : i + 32]})[0] for i in range(0, len(faces), 32)])
    normed: NDF = out / np.linalg.norm(out, axis=1, keepdims=True)
    return normed


def main(argv: list[str] | None = None) -> int:
    from server.modelrepo import embedder
    from server.modelrepo.quantize import CalibrationTable
    from server.modelrepo.sources import fetch_source
    from server.settings import Settings

    ap = argparse.ArgumentParser(prog="python -m bench.calibrate", description=__doc__.split("\n")[0])
    ap.add_argument("--labels", type=Path, default=DEFAULT_LABELS, help="file,identity CSV of the images")
    ap.add_argument("--percentile", type=float, default=99.999, help="two-sided range percentile (default 99.999)")
    ap.add_argument("--out", type=Path, default=embedder.CALIBRATION)
    args = ap.parse_args(argv)
    if not args.labels.is_file():
        print(f"error: {args.labels} not found (the LFW dev images live in ../shared/lfw-dev)", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    t0 = time.perf_counter()
    faces = aligned_faces(image_files(args.labels), settings.model_repository)
    print(f"{len(faces)} aligned faces in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    source = fetch_source(settings.model_cache_dir, embedder.SOURCE, log=lambda m: print(m, file=sys.stderr))
    graph = embedder.int8_float_graph(source)
    tensors = embedder.int8_tensors(graph)
    graph_bytes = graph.SerializeToString()
    method = (f"two-sided {args.percentile:g} percentile of each activation over {len(faces)} aligned faces "
              f"of the LFW dev set ({args.labels.parent.name}), python -m bench.calibrate")

    def table(ranges: dict[str, tuple[float, float]], n: int) -> CalibrationTable:
        return CalibrationTable(embedder.SPEC.name, embedder.SOURCE.sha256, method, n, ranges)

    fp32 = embed(embedder.convert(source), faces)
    # 2-fold: ranges from the even faces judged on the odd ones and vice versa.
    halves = (slice(0, None, 2), slice(1, None, 2))
    for part, (fit, test) in enumerate((halves, halves[::-1])):
        ranges = activation_ranges(graph_bytes, tensors, faces[fit], args.percentile)
        cos = (embed(embedder.convert_int8(source, table(ranges, len(faces[fit]))), faces[test]) * fp32[test]).sum(1)
        print(f"held-out fold {part}: int8 vs fp32 cosine min {cos.min():.4f} mean {cos.mean():.5f}")
    final = table(activation_ranges(graph_bytes, tensors, faces, args.percentile), len(faces))
    cos = (embed(embedder.convert_int8(source, final), faces) * fp32).sum(1)
    print(f"all faces: int8 vs fp32 cosine min {cos.min():.4f} mean {cos.mean():.5f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(final.to_json(), encoding="utf-8")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out} "
          f"({len(final.ranges)} ranges); rebuild with `facerec models` and update the pinned sha256 "
          "in server/modelrepo/embedder.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
