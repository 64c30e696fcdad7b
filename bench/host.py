"""Host bound: the real service path (runtime, batchers, pipeline) with inference replayed, in 1..N processes.

    python -m bench.host                                  # LFW-size pairs and the 1-2 MP photos, 1 and 2 workers
    python -m bench.host --lfw-pairs 100 --workers 1,2,4 --concurrency 8
    python -m bench.host --max-batch-size 16              # the batch size of a GPU / Triton node
    python -m bench.host --only lfw --breakdown           # plus where the host time goes (stage CPU, event loop)

What it answers: how many pairs per second one CPU core can feed to an accelerator. Every request goes through
``ScanService.analyze_pair`` on a ``Runtime`` built as the server builds it (admission, decode budget, the per-model
batchers, the pipeline), at ``--concurrency`` requests in flight per process, but the backend answers from a table
recorded once per data set with the real onnxruntime backend (model cost ~0, outputs exactly the real ones).

Recording runs every row through the real backend one row at a time, so a row's output does not depend on how the
batcher grouped it; the pipeline is deterministic, so the replayed run asks for exactly the recorded rows. A row
that is not in the table is a miss: the request fails, misses are counted and reported, and the tool exits 1.

Reported per data set and worker count: CPU ms per pair (user + system time of the worker processes, all their
threads, over the measured window, divided by the pairs they finished), pairs/s per core (1000 / that), wall
pairs/s of all workers together and the ratio to one worker. The replay lookup's own CPU (hashing the rows) is
measured and reported separately (and subtracted in ``net``). Writes ``bench/results/host.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import cProfile
import dataclasses
import hashlib
import io
import itertools
import multiprocessing as mp
import os
import pickle
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import numpy.typing as npt

from bench.common import (
    DEFAULT_FACES,
    DEFAULT_LFW_PAIRS,
    RESULTS,
    Image,
    Pair,
    csv_ints,
    folder_images,
    machine_busy_seconds,
    machine_info,
    pairs_from_csv,
    table,
    write_json,
)
from bench.raw import StageTimer, instrumented

NDF = npt.NDArray[np.float32]
Table = dict[bytes, dict[str, NDF]]

# Rows are keyed by a SHA-1 of every SAMPLE_STRIDE-th value (plus model, names, shapes): hashing whole rows would
# cost ~3 ms per 640x640 detector canvas, as much as the host work being measured. Recording checks the sampled
# key against a full-row hash, so two different recorded rows sharing a key are reported, never silently mixed.
SAMPLE_STRIDE = 61


def row_key(model: str, row: dict[str, NDF], stride: int = SAMPLE_STRIDE) -> bytes:
    h = hashlib.sha1(model.encode())
    for name in sorted(row):
        v = np.ascontiguousarray(row[name])
        h.update(f"|{name}|{v.dtype.str}|{v.shape}|".encode())
        h.update(v.reshape(-1)[::stride].tobytes() if stride > 1 else v.tobytes())
    return h.digest()


def _rows(inputs: dict[str, NDF]) -> list[dict[str, NDF]]:
    n = len(next(iter(inputs.values())))
    if n == 1:
        return [inputs]
    return [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(n)]


def _concat(outs: list[dict[str, NDF]]) -> dict[str, NDF]:
    if len(outs) == 1:
        return dict(outs[0])  # the recorded arrays as they are: the pipeline only reads model outputs
    return {k: np.concatenate([o[k] for o in outs], axis=0) for k in outs[0]}


class RecordingBackend:
    """The real backend, one row per call (so outputs do not depend on batch composition), remembering each row."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.table: Table = {}
        self._full: dict[bytes, bytes] = {}
        self.collisions = 0

    def spec(self, model: str) -> Any:
        return self.inner.spec(model)

    async def ready(self) -> bool:
        return bool(await self.inner.ready())

    @property
    def description(self) -> str:
        return f"recording {self.inner.description}"

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def infer(self, model: str, inputs: dict[str, NDF]) -> dict[str, NDF]:
        outs = []
        for row in _rows(inputs):
            key, full = row_key(model, row), row_key(model, row, stride=1)
            if key in self.table:
                if self._full[key] != full:
                    self.collisions += 1
                outs.append(self.table[key])
                continue
            out = await self.inner.infer(model, row)
            self.table[key] = {k: np.array(v) for k, v in out.items()}
            self._full[key] = full
            outs.append(self.table[key])
        return _concat(outs)


class ReplayBackend:
    """Answers every row from a recorded table; a row not in it is a miss (counted, and the call fails)."""

    def __init__(self, table: Table, specs: dict[str, Any]) -> None:
        self.table = table
        self.specs = specs
        self.misses: collections.Counter[str] = collections.Counter()
        self.rows: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.cpu_s = 0.0  # thread CPU spent here (hashing, copying): the replay's own cost, not the host's

    def spec(self, model: str) -> Any:
        return self.specs[model]

    async def ready(self) -> bool:
        return True

    @property
    def description(self) -> str:
        return "replay (bench.host)"

    async def aclose(self) -> None:
        return None

    async def infer(self, model: str, inputs: dict[str, NDF]) -> dict[str, NDF]:
        from server.errors import InferenceFailed

        t0 = time.thread_time()
        try:
            rows = _rows(inputs)
            self.calls[model] += 1
            self.rows[model] += len(rows)
            outs = []
            for row in rows:
                hit = self.table.get(row_key(model, row))
                if hit is None:
                    self.misses[model] += 1
                    raise InferenceFailed(f"bench.host replay: no recorded output for a {model} row")
                outs.append(hit)
            return _concat(outs)
        finally:
            self.cpu_s += time.thread_time() - t0


# ----------------------------------------------------------------------------------------------- data sets


@dataclasses.dataclass(slots=True)
class DataSet:
    name: str
    pairs: list[Pair]
    source: str
    info: dict[str, Any]


def lfw_dataset(path: Path, n: int) -> DataSet:
    pairs = pairs_from_csv(path, limit=n)
    return DataSet("lfw", pairs, str(path), {"image_size": "250x250"})


def photos_dataset(folder: Path, n: int, min_mp: float, target_mp: float = 0.0) -> DataSet:
    """Every unordered pair of the folder's face photos of at least ``min_mp`` megapixels, cycled to ``n`` pairs.

    ``target_mp`` > 0 resizes each photo (aspect kept, Lanczos, JPEG quality 92) to about that many megapixels: the
    shared photos are 0.6-1.1 MP, and the host cost that matters for them (decode, letterbox) follows the pixels.
    """
    from PIL import Image as PILImage

    imgs, mps = [], []
    for p in folder_images(folder):
        with PILImage.open(p) as im:
            mp_ = im.size[0] * im.size[1] / 1e6
            if mp_ < min_mp:
                continue
            data = p.read_bytes()
            if target_mp > 0:
                f = (target_mp / mp_) ** 0.5
                size = (round(im.size[0] * f), round(im.size[1] * f))
                buf = io.BytesIO()
                im.convert("RGB").resize(size, PILImage.Resampling.LANCZOS).save(buf, "JPEG", quality=92)
                data, mp_ = buf.getvalue(), size[0] * size[1] / 1e6
        imgs.append(Image(p.name, data))
        mps.append(mp_)
    if len(imgs) < 2:
        raise SystemExit(f"error: fewer than 2 photos of >= {min_mp} MP in {folder}")
    combos = [Pair(a, b) for a, b in itertools.combinations(imgs, 2)]
    pairs = list(itertools.islice(itertools.cycle(combos), n))
    return DataSet("photos", pairs, str(folder), {
        "megapixels_mean": float(np.mean(mps)), "megapixels_min": min(mps), "megapixels_max": max(mps),
        "photos": [i.name for i in imgs], "distinct_pairs": len(combos), "resized_to_mp": target_mp or None})


# ----------------------------------------------------------------------------------------------- one process


def make_settings(data_dir: Path, max_batch_size: int) -> Any:
    from server.settings import Settings

    s = Settings.from_env()
    return dataclasses.replace(s, data_dir=data_dir, max_batch_size=max_batch_size or s.max_batch_size)


@contextlib.asynccontextmanager
async def service(settings: Any, backend: Any) -> Any:
    from server.runtime import Runtime
    from server.service import ScanService

    rt = await Runtime.start(settings, backend=backend)
    try:
        yield ScanService(rt), rt
    finally:
        await rt.aclose()


async def drive(svc: Any, pairs: list[Pair], concurrency: int) -> dict[str, Any]:
    """Every pair through ``analyze_pair``, ``concurrency`` in flight; counts outcomes by error type."""
    outcomes: collections.Counter[str] = collections.Counter()
    it = iter(pairs)

    async def lane() -> None:
        for p in it:
            try:
                await svc.analyze_pair(p.a.data, p.b.data, source="http")
                outcomes["ok"] += 1
            except Exception as exc:  # a photo without a usable face is an answer too, not a bench failure
                outcomes[type(exc).__name__] += 1

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return dict(outcomes)


def batch_stats(rt: Any) -> dict[str, Any]:
    out = {}
    for name, b in rt.runner.batchers.items():
        st = b.stats
        out[name] = {"batches": st.batches, "items": st.items,
                     "mean_batch": st.items / st.batches if st.batches else None}
    return out


class CpuStageTimer(StageTimer):
    """Thread CPU time per stage (in the stage's own thread) rather than wall time, for the breakdown."""

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.thread_time() - t0
                self.calls[name] += 1

        return timed


@contextlib.contextmanager
def stage_timers(rt: Any, timer: CpuStageTimer) -> Iterator[None]:
    import server.service as service_mod

    decode, header = getattr(service_mod, "decode_scaled"), getattr(service_mod, "read_header")  # noqa: B009
    with (instrumented(rt.pipeline, timer),
          mock.patch.object(service_mod, "decode_scaled", timer.wrap("decode", decode)),
          mock.patch.object(service_mod, "read_header", timer.wrap("read header", header))):
        yield


async def worker_main(table: Table, specs: dict[str, Any], pairs: list[Pair], args: dict[str, Any], barrier: Any,
                      breakdown: str | None) -> dict[str, Any]:
    """``breakdown``: None (measure), "stages" (stage CPU timers) or "profile" (cProfile of the loop thread)."""
    backend = ReplayBackend(table, specs)
    with tempfile.TemporaryDirectory(prefix="bench-host-") as tmp:
        settings = make_settings(Path(tmp), args["max_batch_size"])
        async with service(settings, backend) as (svc, rt):
            await drive(svc, pairs[: args["warmup"]], args["concurrency"])
            for b in rt.runner.batchers.values():
                b.stats.batches = b.stats.items = 0
                b.stats.last_batch_sizes.clear()
            backend.cpu_s = 0.0
            misses_warm = sum(backend.misses.values())
            timer = CpuStageTimer()
            # Thread CPU time, not wall: with wall time, waiting for the GIL is charged to whatever function the
            # loop thread happens to be in (a tobytes() or a thread_time() call "taking" 0.2 ms).
            prof = cProfile.Profile(time.thread_time) if breakdown == "profile" else None
            with stage_timers(rt, timer) if breakdown == "stages" else contextlib.nullcontext():
                if barrier is not None:
                    await asyncio.to_thread(barrier.wait)
                cpu0, t0 = time.process_time(), time.perf_counter()
                if prof is not None:
                    prof.enable()
                outcomes = await drive(svc, pairs, args["concurrency"])
                if prof is not None:
                    prof.disable()
                wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            result: dict[str, Any] = {
                "pid": os.getpid(), "pairs": len(pairs), "outcomes": outcomes, "wall_s": wall, "cpu_s": cpu,
                "replay_cpu_s": backend.cpu_s, "misses": dict(backend.misses), "misses_warmup": misses_warm,
                "t_start": t0, "batchers": batch_stats(rt), "replay_calls": dict(backend.calls),
                "replay_rows": dict(backend.rows)}
            result["stages_cpu_s"] = {k: [v, timer.calls[k]] for k, v in timer.seconds.items()}
            if prof is not None:
                s = io.StringIO()
                pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(20)
                result["loop_profile"] = s.getvalue()
            return result


def _worker_entry(table_path: str, pairs: list[Pair], args: dict[str, Any], barrier: Any, breakdown: str | None,
                  out: Any) -> None:
    try:
        with open(table_path, "rb") as f:
            table, specs = pickle.load(f)
        out.put(asyncio.run(worker_main(table, specs, pairs, args, barrier, breakdown)))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            barrier.abort()
        out.put({"error": f"{type(exc).__name__}: {exc}"})
        raise


def run_workers(table_path: str, ds: DataSet, workers: int, args: dict[str, Any],
                breakdown: str | None = None) -> dict[str, Any]:
    """``workers`` processes, each with its own runtime and replay table, sharing the pairs; measured together."""
    ctx = mp.get_context("spawn")  # a fresh interpreter per worker, as `facerec serve --workers N` starts them
    barrier = ctx.Barrier(workers + 1)
    out = ctx.Queue()
    shares = [ds.pairs[i::workers] for i in range(workers)]
    procs = [ctx.Process(target=_worker_entry, args=(table_path, shares[i], args, barrier, breakdown, out),
                         daemon=True) for i in range(workers)]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=600)  # every worker has loaded its table, built its runtime and warmed up
        busy0, t0 = machine_busy_seconds(), time.perf_counter()
        results = [out.get(timeout=1800) for _ in procs]
        wall = time.perf_counter() - t0
        busy1 = machine_busy_seconds()
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise SystemExit(f"error: a bench.host worker failed: {errors[0]}")
    pairs = sum(r["pairs"] for r in results)
    cpu = sum(r["cpu_s"] for r in results)
    replay = sum(r["replay_cpu_s"] for r in results)
    span = max(r["wall_s"] for r in results)
    misses: collections.Counter[str] = collections.Counter()
    outcomes: collections.Counter[str] = collections.Counter()
    for r in results:
        misses.update(r["misses"])
        outcomes.update(r["outcomes"])
    busy = None if busy0 is None or busy1 is None else (busy1 - busy0) / wall
    run: dict[str, Any] = {
        "workers": workers, "store": "none", "concurrency": args["concurrency"], "pairs": pairs,
        "outcomes": dict(outcomes), "misses": dict(misses),
        "misses_warmup": sum(r["misses_warmup"] for r in results),
        "wall_s": span, "cpu_s": cpu,
        "cpu_ms_per_pair": 1000 * cpu / pairs, "replay_cpu_ms_per_pair": 1000 * replay / pairs,
        "net_cpu_ms_per_pair": 1000 * (cpu - replay) / pairs,
        "pairs_per_s_per_core": pairs / cpu, "pairs_per_s": pairs / span,
        "worker_cpu_cores": cpu / span,
        "machine_busy_cores": busy,
        "other_cpu_cores": None if busy is None else max(busy - cpu / wall, 0.0),
        "per_worker": [{k: r[k] for k in ("pairs", "wall_s", "cpu_s", "replay_cpu_s", "batchers", "replay_calls",
                                           "replay_rows")} for r in results],
    }
    r = results[0]
    if breakdown == "stages":
        run["stages_cpu_ms_per_pair"] = {k: 1000 * v / r["pairs"] for k, (v, _) in r["stages_cpu_s"].items()}
    if breakdown == "profile":
        run["loop_profile"] = r["loop_profile"]
    return run


async def record(ds: DataSet, args: dict[str, Any]) -> tuple[Table, dict[str, Any], int]:
    """One pass over the data set through the same service path with the real backend, remembering each row."""
    from server.inference.backend import MODEL_NAMES
    from server.inference.factory import create_backend

    with tempfile.TemporaryDirectory(prefix="bench-host-rec-") as tmp:
        settings = make_settings(Path(tmp), args["max_batch_size"])
        rec = RecordingBackend(await create_backend(settings))
        specs = {m: rec.spec(m) for m in MODEL_NAMES}
        async with service(settings, rec) as (svc, _):
            # Each distinct pair once is enough (the cycled photo pairs repeat): rows are keyed by content.
            seen: dict[tuple[str, str], Pair] = {}
            for p in ds.pairs:
                seen.setdefault((p.a.name, p.b.name), p)
            await drive(svc, list(seen.values()), args["concurrency"])
        return rec.table, specs, rec.collisions


def git_commit() -> str | None:
    with contextlib.suppress(OSError):
        proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1], check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parents[1], check=False).stdout.strip()
        if proc.returncode == 0:
            return proc.stdout.strip() + ("-dirty" if dirty else "")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.host", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--only", default="lfw,photos", help="data sets: lfw, photos (comma-separated)")
    ap.add_argument("--workers", type=csv_ints, default=[1, 2], help="worker process counts, e.g. 1,2")
    ap.add_argument("--concurrency", type=int, default=8, help="analyze_pair calls in flight per worker")
    ap.add_argument("--lfw-pairs", type=int, default=200, help="the first N pairs of --lfw")
    ap.add_argument("--lfw", type=Path, default=DEFAULT_LFW_PAIRS)
    ap.add_argument("--photo-pairs", type=int, default=60, help="pairs of the photos (cycled over every pair)")
    ap.add_argument("--photos", type=Path, default=DEFAULT_FACES)
    ap.add_argument("--photo-min-mp", type=float, default=0.6, help="only photos of at least this many megapixels")
    ap.add_argument("--photo-mp", type=float, default=1.5,
                    help="resize the photos to about this many megapixels (0: as they are, 0.6-1.1 MP)")
    ap.add_argument("--warmup", type=int, default=8, help="unmeasured pairs per worker before the window")
    ap.add_argument("--max-batch-size", type=int, default=0, help="FACEREC_MAX_BATCH_SIZE (0: auto, 1 on CPU)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also 1-worker passes with stage CPU timers, and with a cProfile of the event loop thread")
    ap.add_argument("--tables", type=Path, help="keep the recorded tables in this folder and reuse them (before/after "
                    "runs of the same pipeline; a table from another pipeline version misses, and the run fails)")
    ap.add_argument("--out", type=Path, default=RESULTS / "host.json")
    a = ap.parse_args(argv)
    args = {"concurrency": a.concurrency, "warmup": a.warmup, "max_batch_size": a.max_batch_size}
    wanted = [x.strip() for x in a.only.split(",") if x.strip()]
    sets = []
    for name in wanted:
        if name == "lfw":
            sets.append(lfw_dataset(a.lfw, a.lfw_pairs))
        elif name == "photos":
            sets.append(photos_dataset(a.photos, a.photo_pairs, a.photo_min_mp, a.photo_mp))
        else:
            raise SystemExit(f"error: unknown data set {name!r} (lfw, photos)")
    machine = machine_info()
    machine["load_average_start"] = list(os.getloadavg())
    result: dict[str, Any] = {"machine": machine, "commit": git_commit(),
                              "settings": {**args, "workers": a.workers, "sample_stride": SAMPLE_STRIDE},
                              "datasets": {}}
    total_misses = 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-host-table-") as tmp:
        for ds in sets:
            tag = f"-{a.photo_mp}mp" if ds.name == "photos" else ""
            path = (a.tables or Path(tmp)) / f"{ds.name}{tag}-{len(ds.pairs)}-c{a.concurrency}.pickle"
            collisions = 0
            if a.tables is not None and path.is_file():
                print(f"{ds.name}: reusing the table {path}", file=sys.stderr, flush=True)
            else:
                t0 = time.perf_counter()
                tbl, specs, collisions = asyncio.run(record(ds, args))
                print(f"{ds.name}: recorded {len(tbl)} rows in {time.perf_counter() - t0:.1f}s"
                      + (f", {collisions} KEY COLLISIONS" if collisions else ""), file=sys.stderr, flush=True)
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("wb") as f:
                    pickle.dump((tbl, specs), f, protocol=pickle.HIGHEST_PROTOCOL)
                del tbl
            entry: dict[str, Any] = {"source": ds.source, "pairs": len(ds.pairs), **ds.info,
                                     "key_collisions": collisions, "runs": []}
            base: float | None = None
            for w in a.workers:
                run = run_workers(str(path), ds, w, args)
                base = base or run["pairs_per_s"]
                run["speedup_over_first"] = run["pairs_per_s"] / base
                entry["runs"].append(run)
                total_misses += sum(run["misses"].values()) + run["misses_warmup"]
                rows.append([ds.name, w, run["pairs"], run["cpu_ms_per_pair"], run["net_cpu_ms_per_pair"],
                             run["pairs_per_s_per_core"], run["pairs_per_s"], run["speedup_over_first"],
                             run["other_cpu_cores"], sum(run["misses"].values()),
                             sum(v for k, v in run["outcomes"].items() if k != "ok")])
            if a.breakdown:
                bd = run_workers(str(path), ds, 1, args, breakdown="stages")
                prof = run_workers(str(path), ds, 1, args, breakdown="profile")
                entry["breakdown"] = {**{k: bd[k] for k in ("cpu_ms_per_pair", "stages_cpu_ms_per_pair",
                                                            "replay_cpu_ms_per_pair")},
                                      "loop_profile": prof["loop_profile"]}
                total_misses += sum(bd["misses"].values()) + sum(prof["misses"].values())
            result["datasets"][ds.name] = entry
    result["machine"]["load_average_end"] = list(os.getloadavg())
    result["misses"] = total_misses
    write_json(a.out, result)
    print(table(rows, ["set", "workers", "pairs", "CPU ms/pair", "net ms/pair", "pairs/s/core", "pairs/s",
                       "x first", "other cores", "misses", "non-ok"]))
    for name, done in result["datasets"].items():
        bd = done.get("breakdown")
        if not bd:
            continue
        stages = sorted(bd["stages_cpu_ms_per_pair"].items(), key=lambda kv: -kv[1])
        known = sum(v for _, v in stages)
        print(f"\n{name}: CPU ms per pair by stage (1 worker; {bd['cpu_ms_per_pair']:.2f} ms in all, replay "
              f"{bd['replay_cpu_ms_per_pair']:.2f})")
        rest = bd["cpu_ms_per_pair"] - known - bd["replay_cpu_ms_per_pair"]
        print(table([[k, v] for k, v in stages] + [["rest: event loop, asyncio, batchers, service", rest]],
                    ["stage", "CPU ms/pair"]))
        print(f"\n{name}: event loop thread, top functions by own CPU time (cProfile, thread CPU clock)")
        print(bd["loop_profile"])
    print(f"wrote {a.out}", file=sys.stderr)
    if total_misses:
        print(f"error: {total_misses} replay misses: the replayed run asked for rows that were not recorded "
              "(the pipeline is not deterministic, or the table is stale)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
