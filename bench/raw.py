"""Raw bound: the same image pairs through FacePipeline in-process (onnxruntime, no server, no batcher).

    python -m bench.raw                               # batch sizes 1,2,4,8,16 pairs, 10 s / 64 pairs each
    python -m bench.raw --batch 8 --duration 30 --inflight 2
    python -m bench.raw --pairs ../shared/lfw-dev/pairs.csv --limit 200

Each step decodes both images of B pairs, analyses the 2B images as one pipeline batch and compares the pairs,
back to back; ``--inflight K`` keeps K such batches in flight (as a server overlaps requests). Every stage is
timed (decode, detector pre/infer/post, landmarker pre/infer/post over all passes, embedder align/pre/infer/post,
attributes), so the report says where a pair's time goes; what is left is Python/asyncio/thread hand-offs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from bench.common import (
    MODELS,
    RESULTS,
    CpuMeter,
    Pair,
    Progress,
    csv_ints,
    load_pairs,
    machine_info,
    table,
    write_json,
)
from server.inference.context import INTERNAL
from server.settings import Settings

STAGE_ORDER = ("decode", "detector pre", "detector infer", "detector post", "landmarker pre", "landmarker infer",
               "landmarker post", "embedder align", "embedder pre", "embedder infer", "embedder post", "attributes")


class StageTimer:
    """Accumulates wall time per stage name (thread-safe enough: += on floats under the GIL)."""

    def __init__(self) -> None:
        self.seconds: collections.defaultdict[str, float] = collections.defaultdict(float)
        self.calls: collections.Counter[str] = collections.Counter()

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0
                self.calls[name] += 1

        return timed

    def snapshot(self) -> dict[str, tuple[float, int]]:
        return {k: (v, self.calls[k]) for k, v in self.seconds.items()}


class TimingRunner:
    """An InferenceRunner that times each model call on the backend (``<model> infer``)."""

    def __init__(self, backend: Any, timer: StageTimer) -> None:
        self.backend, self.timer = backend, timer

    async def infer(self, model: str, inputs: dict[str, Any], ctx: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            out: dict[str, Any] = await self.backend.infer(model, inputs)
            return out
        finally:
            self.timer.seconds[f"{model} infer"] += time.perf_counter() - t0
            self.timer.calls[f"{model} infer"] += 1


@contextlib.contextmanager
def instrumented(pipe: Any, timer: StageTimer) -> Iterator[None]:
    """Time the pipeline's pre/post-processing stages (instance attributes and the two class-level helpers)."""
    import server.inference.pipeline as pipeline_mod
    from server.inference.models.embedder import Embedder

    pipe.detector.preprocess = timer.wrap("detector pre", pipe.detector.preprocess)
    pipe.detector.postprocess = timer.wrap("detector post", pipe.detector.postprocess)
    if hasattr(pipe.detector, "preprocess_placed"):  # canvases sized to the photo (bench.robust compares trees)
        pipe.detector.preprocess_placed = timer.wrap("detector pre", pipe.detector.preprocess_placed)
        pipe.detector.postprocess_placed = timer.wrap("detector post", pipe.detector.postprocess_placed)
    pipe.landmarker.preprocess = timer.wrap("landmarker pre", pipe.landmarker.preprocess)
    pipe.landmarker.postprocess = timer.wrap("landmarker post", pipe.landmarker.postprocess)
    pipe.embedder.postprocess = timer.wrap("embedder post", pipe.embedder.postprocess)
    with (mock.patch.object(Embedder, "align", staticmethod(timer.wrap("embedder align", Embedder.align))),
          mock.patch.object(Embedder, "preprocess", staticmethod(timer.wrap("embedder pre", Embedder.preprocess))),
          mock.patch.object(pipeline_mod, "analyze_faces", timer.wrap("attributes", pipeline_mod.analyze_faces))):
        yield


class RawBench:
    """One backend + pipeline, reused for every step."""

    def __init__(self, settings: Settings, timer: StageTimer | None = None) -> None:
        self.settings = settings
        self.timer = timer or StageTimer()
        self.backend: Any = None
        self.pipe: Any = None

    async def __aenter__(self) -> RawBench:
        from server.analysis.calibration import ScoreCalibration
        from server.inference.backend import MODEL_NAMES
        from server.inference.decode import DecodeLimits
        from server.inference.onnxrt import OnnxRuntimeBackend
        from server.inference.pipeline import FacePipeline
        from server.runtime import pipeline_config

        s = self.settings
        self.limits = DecodeLimits(s.max_image_pixels, s.min_image_side, s.max_image_side)
        self.backend = await asyncio.to_thread(OnnxRuntimeBackend, s.model_repository, device=s.device,
                                               intra_threads=s.ort_intra_threads, inter_threads=s.ort_inter_threads,
                                               precision=s.precision)
        self.pipe = FacePipeline(TimingRunner(self.backend, self.timer),
                                 {m: self.backend.spec(m) for m in MODEL_NAMES}, pipeline_config(s),
                                 ScoreCalibration())
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(instrumented(self.pipe, self.timer))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stack.close()
        await self.backend.aclose()

    def _decode(self, data: bytes) -> Any:
        from server.inference.decode import decode_image

        t0 = time.perf_counter()
        try:
            return decode_image(data, self.limits)
        finally:
            self.timer.seconds["decode"] += time.perf_counter() - t0
            self.timer.calls["decode"] += 1

    async def run_batch(self, pairs: list[Pair]) -> list[float | None]:
        """Decode, analyse and compare ``pairs`` as one batch; the cosine per pair (``None``: no face)."""
        datas = [d for p in pairs for d in (p.a.data, p.b.data)]
        # One after the other on one worker thread, so the stage times add up to the wall time at inflight 1.
        images = await asyncio.to_thread(lambda: [self._decode(d) for d in datas])
        results = await self.pipe.analyze(images, INTERNAL)
        out: list[float | None] = []
        for k in range(len(pairs)):
            r1, r2 = results[2 * k], results[2 * k + 1]
            out.append(None if r1 is None or r2 is None else self.pipe.compare(r1, r2).cosine)
        return out

    async def step(self, pairs: list[Pair], batch: int, *, requests: int, duration: float, inflight: int = 1,
                   progress: bool = True) -> dict[str, Any]:
        """Batches of ``batch`` pairs back to back (``inflight`` at a time), bounded by pair count and time."""
        await self.run_batch([pairs[i % len(pairs)] for i in range(batch)])  # warm-up, not counted
        self.timer.reset()
        done = failed = 0
        issued = 0
        lat: list[float] = []
        prog = Progress(requests, f"raw batch={batch} inflight={inflight}", enabled=progress)
        meter = CpuMeter()
        t_start = time.perf_counter()
        deadline = t_start + duration

        async def worker() -> None:
            nonlocal done, failed, issued
            while issued < requests and time.perf_counter() < deadline:
                n = min(batch, requests - issued)
                chunk = [pairs[(issued + j) % len(pairs)] for j in range(n)]
                issued += n
                t0 = time.perf_counter()
                cos = await self.run_batch(chunk)
                lat.append(time.perf_counter() - t0)
                done += n
                failed += sum(c is None for c in cos)
                prog.update(n)

        await asyncio.gather(*(worker() for _ in range(inflight)))
        elapsed = time.perf_counter() - t_start
        cpu = meter.read()
        prog.close()
        return {"batch_pairs": batch, "inflight": inflight, "pairs": done, "no_face": failed,
                "cpu_cores": cpu["self_cpu_cores"], "other_cpu_cores": cpu["other_cpu_cores"],
                "elapsed_s": elapsed, "pairs_per_s": done / elapsed,
                "batch_latency_ms": {"p50": float(np.percentile(lat, 50)) * 1000, "max": max(lat) * 1000},
                "profile": profile(self.timer.snapshot(), elapsed, done, inflight)}


def profile(snap: dict[str, tuple[float, int]], elapsed: float, pairs: int, inflight: int) -> dict[str, Any]:
    """Per-stage ms per pair and share of the wall time; ``other`` is what the stages do not account for."""
    stages: dict[str, Any] = {}
    total = 0.0
    for name in [*STAGE_ORDER, *sorted(set(snap) - set(STAGE_ORDER))]:
        if name in snap:
            secs, calls = snap[name]
            total += secs
            stages[name] = {"ms_per_pair": 1000 * secs / max(pairs, 1), "calls": calls,
                            "share": secs / (elapsed * inflight)}
    other = max(elapsed * inflight - total, 0.0)
    stages["other (python, asyncio, thread hand-offs)"] = {
        "ms_per_pair": 1000 * other / max(pairs, 1), "calls": None, "share": other / (elapsed * inflight)}
    infer = sum(snap.get(f"{m} infer", (0.0, 0))[0] for m in MODELS)
    return {"stages": stages, "wall_ms_per_pair": 1000 * elapsed / max(pairs, 1),
            "model_inference_share": infer / (elapsed * inflight),
            "note": "shares are of wall time x inflight; with inflight > 1 stages overlap"}


def limits_text(step: dict[str, Any]) -> list[str]:
    """A few sentences on what limits throughput, from a step's profile."""
    st = step["profile"]["stages"]
    ranked = sorted(st.items(), key=lambda kv: -kv[1]["ms_per_pair"])
    infer_ms = sum(st.get(f"{m} infer", {}).get("ms_per_pair", 0.0) for m in MODELS)
    wall = step["profile"]["wall_ms_per_pair"]
    lines = [f"at batch {step['batch_pairs']} pairs (inflight {step['inflight']}): {wall:.1f} ms per pair; "
             f"model inference {infer_ms:.1f} ms ({100 * step['profile']['model_inference_share']:.0f} %)"]
    lines += [f"  {name}: {v['ms_per_pair']:.1f} ms/pair ({100 * v['share']:.0f} %)" for name, v in ranked[:6]]
    return lines


def sweep_table(steps: list[dict[str, Any]]) -> str:
    rows = []
    for s in steps:
        st = s["profile"]["stages"]
        rows.append([s["batch_pairs"], s["inflight"], s["pairs"], s["pairs_per_s"], s["batch_latency_ms"]["p50"],
                     st.get("decode", {}).get("ms_per_pair"),
                     *(st.get(f"{m} infer", {}).get("ms_per_pair") for m in MODELS),
                     sum(v["ms_per_pair"] for k, v in st.items() if k.endswith((" pre", " post", " align"))),
                     st.get("attributes", {}).get("ms_per_pair"),
                     st.get("other (python, asyncio, thread hand-offs)", {}).get("ms_per_pair")])
    return table(rows, ["batch", "inflight", "pairs", "pairs/s", "batch p50 ms", "decode", "det infer",
                        "lmk infer", "emb infer", "pre/post", "attrs", "other"])


async def run(pairs: list[Pair], batches: list[int], *, requests: int, duration: float, inflight: list[int],
              settings: Settings | None = None, progress: bool = True) -> dict[str, Any]:
    """The sweep over batch sizes (inflight 1), then the extra inflight levels at the best batch size."""
    settings = settings or Settings.from_env()
    steps: list[dict[str, Any]] = []
    async with RawBench(settings) as rb:
        for b in batches:
            steps.append(await rb.step(pairs, b, requests=requests, duration=duration, progress=progress))
            print(f"  raw batch {b:>2} pairs: {steps[-1]['pairs_per_s']:.2f} pairs/s, {steps[-1]['cpu_cores']:.2f} "
                  f"cores (other work: {steps[-1]['other_cpu_cores'] or 0:.2f} cores)", file=sys.stderr)
        best_b = max(steps, key=lambda s: s["pairs_per_s"])["batch_pairs"]
        for k in inflight:
            if k > 1:
                steps.append(await rb.step(pairs, best_b, requests=requests, duration=duration, inflight=k,
                                           progress=progress))
                print(f"  raw batch {best_b:>2} pairs x {k} in flight: {steps[-1]['pairs_per_s']:.2f} pairs/s",
                      file=sys.stderr)
        description = rb.backend.description
    best = max(steps, key=lambda s: s["pairs_per_s"])
    # The profile adds up only when stages run one after another: describe the best step at 1 in flight.
    best_serial = max((s for s in steps if s["inflight"] == 1), key=lambda s: s["pairs_per_s"])
    return {"backend": description, "ort_intra_threads": settings.ort_intra_threads,
            "steps": steps, "best": {k: best[k] for k in ("batch_pairs", "inflight", "pairs_per_s")},
            "limits": limits_text(best_serial)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.raw", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--batch", type=csv_ints, default=[1, 2, 4, 8, 16], help="pairs per batch, e.g. 1,2,4,8,16")
    ap.add_argument("--inflight", type=csv_ints, default=[1], help="also run the best batch with K in flight")
    ap.add_argument("--requests", type=int, default=64, help="at most this many pairs per step")
    ap.add_argument("--duration", type=float, default=10.0, help="at most this many seconds per step")
    ap.add_argument("--folder", type=Path, help="all pairs of this folder's images (default ../shared/faces)")
    ap.add_argument("--pairs", type=Path, help="CSV file1,file2[,same] instead of a folder")
    ap.add_argument("--root", type=Path)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--out", type=Path, default=RESULTS / "raw.json")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    pairs, source = load_pairs(args.folder, args.pairs, args.root, args.limit)
    print(f"{len(pairs)} pairs from {source}", file=sys.stderr)
    report = asyncio.run(run(pairs, args.batch, requests=args.requests, duration=args.duration,
                             inflight=args.inflight, progress=not args.no_progress))
    print(sweep_table(report["steps"]))
    print("\n".join(report["limits"]))
    write_json(args.out, {"machine": machine_info(), "pairs_source": source, "pairs": len(pairs), **report})
    print(f"wrote {args.out}", file=sys.stderr)
    return 0



if __name__ == "__main__":
    sys.exit(main())
