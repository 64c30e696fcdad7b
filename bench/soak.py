"""Soak test: a long open-loop HTTP load at ~80 % of the measured maximum throughput (loopback only).

    python -m bench.soak                                  # own server, measure max, 600 s at 80 % of it
    python -m bench.soak --duration 60                    # a short smoke run
    python -m bench.soak --rate 8 --duration 600          # skip the measurement: 8 compares/s
    python -m bench.soak --url http://127.0.0.1:8000 --data-dir ~/.local/share/facerec --pid 12345

Without ``--url`` it starts ``facerec serve`` on free loopback ports with a temporary data directory (SQLite, local
token issuer) and stops it afterwards. Unless ``--rate`` is given, a short closed-loop burst (``--burst-s``
seconds at ``--concurrency`` clients) measures the maximum throughput first; the soak then sends Poisson arrivals
at ``--fraction`` of it for ``--duration`` seconds. Latency counts from each request's scheduled start (no
coordinated omission). Every ``--sample-s`` seconds the server's resident memory is sampled (psutil, else
``/proc/<pid>/status``); latency percentiles are reported per ``--window``-second window.

Pass criteria (printed, and in the JSON): zero 5xx and zero transport errors; p99 stable (the p99 of all requests
in the second half after warm-up at most 1.5x that of the first half; a single 30-s window holds ~300 requests, so
its p99 is the 3rd-slowest request and swings 5x at 80 % Poisson load without any drift: windows are reported, the
halves are judged); resident memory growth under 5 % from the end of warm-up to the end.
Results: ``bench/results/soak.json`` and ``soak.png`` (needs matplotlib from the bench extra; skipped with a
message when absent). The exit status is 0 when every criterion passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    RESULTS,
    Pair,
    bench_server,
    load_pairs,
    machine_info,
    mint_token,
    require_loopback,
    write_json,
)

COMPARE_PATH = "/v1/compare_face"
P99_STABILITY = 1.5
RSS_GROWTH_LIMIT = 0.05


# ----------------------------------------------------------------------------------------------- measurements


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` (psutil when installed, else ``/proc/<pid>/status``); None when unreadable."""
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        pass
    except Exception:  # psutil.NoSuchProcess / AccessDenied: the caller records a gap
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass(slots=True)
class Record:
    t: float  # scheduled start, seconds since the soak began
    latency: float  # seconds, from the scheduled start to the answer
    status: str  # HTTP status code, or the transport error's class name


@dataclass(slots=True)
class Run:
    records: list[Record] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)
    client_dropped: int = 0


class Sender:
    """Multipart compares over one httpx client; returns the status code (or the transport error's name)."""

    def __init__(self, url: str, token: str, pairs: list[Pair], connections: int, timeout: float) -> None:
        import httpx

        self.pairs = pairs
        self.client = httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections))
        self.errors: tuple[type[BaseException], ...] = (httpx.HTTPError,)

    async def send(self, i: int) -> str:
        p = self.pairs[i % len(self.pairs)]
        files = {"file1": (p.a.name, p.a.data, p.a.mime), "file2": (p.b.name, p.b.data, p.b.mime)}
        try:
            r = await self.client.post(COMPARE_PATH, data={"channel": "OTHER", "reference": f"soak-{i}"},
                                       files=files)
        except self.errors as exc:
            return type(exc).__name__
        return str(r.status_code)

    async def aclose(self) -> None:
        await self.client.aclose()


async def burst(sender: Sender, concurrency: int, seconds: float) -> dict[str, Any]:
    """Closed loop: ``concurrency`` clients back to back for ``seconds``; the throughput of 200s per second."""
    for i in range(concurrency):  # warm-up, unmeasured
        await sender.send(i)
    statuses: collections.Counter[str] = collections.Counter()
    t0 = time.perf_counter()
    end = t0 + seconds
    counter = iter(range(10**9))

    async def client() -> None:
        while time.perf_counter() < end:
            statuses[await sender.send(next(counter))] += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return {"concurrency": concurrency, "seconds": round(elapsed, 2), "statuses": dict(statuses),
            "throughput": statuses["200"] / elapsed}


async def soak(sender: Sender, rate: float, duration: float, pid: int | None, sample_s: float,
               max_inflight: int, seed: int = 1) -> Run:
    """Poisson arrivals at ``rate``/s for ``duration`` s, sampling the server's RSS every ``sample_s``."""
    run = Run()
    rng = random.Random(seed)
    tasks: set[asyncio.Task[None]] = set()
    t0 = time.perf_counter()
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            if pid is not None:
                value = rss_bytes(pid)
                if value is not None:
                    run.rss.append((time.perf_counter() - t0, value))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), sample_s)

    async def one(i: int, scheduled: float) -> None:
        status = await sender.send(i)
        run.records.append(Record(scheduled - t0, time.perf_counter() - scheduled, status))

    sampler = asyncio.create_task(sample())
    last_report = t0
    scheduled = t0
    i = 0
    while True:
        scheduled += rng.expovariate(rate)
        if scheduled - t0 > duration:
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= max_inflight:
            run.client_dropped += 1  # the generator itself cannot keep up: reported, never hidden
            continue
        task = asyncio.create_task(one(i, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
        now = time.perf_counter()
        if now - last_report >= 30:
            last_report = now
            bad = sum(1 for r in run.records if not r.status.startswith(("2", "4")))
            rss = f", rss {run.rss[-1][1] / 2**20:.0f} MiB" if run.rss else ""
            print(f"  {now - t0:5.0f} s: {len(run.records)} done, {len(tasks)} in flight, {bad} errors{rss}",
                  flush=True)
    if tasks:
        await asyncio.gather(*tasks)
    stop.set()
    await sampler
    return run


# ----------------------------------------------------------------------------------------------- analysis


def windows(run: Run, duration: float, warmup: float, width: float) -> list[dict[str, Any]]:
    """Per-window stats of the requests *scheduled* in each window from the end of warm-up on (a trailing
    window shorter than half a width joins the one before)."""
    edges = list(np.arange(warmup, duration, width))
    if len(edges) > 1 and duration - edges[-1] < width / 2:
        edges.pop()
    out = []
    for k, start in enumerate(edges):
        end = edges[k + 1] if k + 1 < len(edges) else duration
        recs = [r for r in run.records if start <= r.t < end]
        ok = [r.latency * 1000 for r in recs if r.status == "200"]
        p50, p99 = (np.percentile(ok, [50, 99]).tolist() if ok else (None, None))
        out.append({"start_s": round(float(start), 1), "end_s": round(float(end), 1), "requests": len(recs),
                    "ok": len(ok), "rate": round(len(recs) / (end - start), 2), "p50_ms": p50, "p99_ms": p99,
                    "errors_5xx": sum(1 for r in recs if r.status.startswith("5"))})
    return out


def rss_growth(run: Run, warmup: float, width: float) -> dict[str, Any]:
    """Median RSS over the first window after warm-up vs. over the last window."""
    after = [(t, v) for t, v in run.rss if t >= warmup]
    if len(after) < 2:
        return {"start_mib": None, "end_mib": None, "growth": None}
    end_t = after[-1][0]
    first = [v for t, v in after if t < warmup + width] or [after[0][1]]
    last = [v for t, v in after if t > end_t - width] or [after[-1][1]]
    a, b = statistics.median(first), statistics.median(last)
    return {"start_mib": round(a / 2**20, 1), "end_mib": round(b / 2**20, 1), "growth": (b - a) / a,
            "max_mib": round(max(v for _, v in run.rss) / 2**20, 1)}


def verdict(run: Run, wins: list[dict[str, Any]], rss: dict[str, Any]) -> dict[str, Any]:
    statuses = collections.Counter(r.status for r in run.records)
    n5xx = sum(n for s, n in statuses.items() if s.startswith("5"))
    transport = sum(n for s, n in statuses.items() if not s.isdigit())
    p99s = [w["p99_ms"] for w in wins if w["p99_ms"] is not None]
    window_ratio = p99s[-1] / p99s[0] if len(p99s) >= 2 and p99s[0] else None
    # Halves of the measured period (after warm-up), each pooling thousands of requests.
    measured = [r for r in run.records if r.status == "200" and r.t >= wins[0]["start_s"]] if wins else []
    mid = (wins[0]["start_s"] + wins[-1]["end_s"]) / 2 if wins else 0.0
    first_half = [r.latency * 1000 for r in measured if r.t < mid]
    second_half = [r.latency * 1000 for r in measured if r.t >= mid]
    half_p99 = (float(np.percentile(first_half, 99)), float(np.percentile(second_half, 99))) \
        if first_half and second_half else None
    ratio = half_p99[1] / half_p99[0] if half_p99 and half_p99[0] else None
    growth = rss["growth"]
    checks = {
        "zero_5xx": {"pass": n5xx == 0 and transport == 0, "5xx": n5xx, "transport_errors": transport},
        "p99_stable": {"pass": ratio is not None and ratio <= P99_STABILITY, "second_over_first_half": ratio,
                       "half_p99_ms": half_p99, "last_over_first_window": window_ratio, "limit": P99_STABILITY},
        "rss_growth": {"pass": growth is not None and growth < RSS_GROWTH_LIMIT, "growth": growth,
                       "limit": RSS_GROWTH_LIMIT},
    }
    return {"statuses": dict(statuses), "checks": checks, "pass": all(c["pass"] for c in checks.values())}


def plot(path: Path, run: Run, wins: list[dict[str, Any]], warmup: float, rate: float) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (bench extra): skipping the plot", file=sys.stderr)
        return None
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    ok = [r for r in run.records if r.status == "200"]
    ax1.scatter([r.t for r in ok], [r.latency * 1000 for r in ok], s=2, alpha=0.25, color="0.6", label="request")
    mids = [(w["start_s"] + w["end_s"]) / 2 for w in wins]
    ax1.plot(mids, [w["p99_ms"] for w in wins], "o-", color="C3", label="p99 per window")
    ax1.plot(mids, [w["p50_ms"] for w in wins], "o-", color="C0", label="p50 per window")
    ax1.set_ylabel("latency (ms)")
    ax1.set_title(f"soak: open loop at {rate:.2f} compares/s")
    ax1.legend(loc="upper right", fontsize=8)
    if run.rss:
        ax2.plot([t for t, _ in run.rss], [v / 2**20 for _, v in run.rss], color="C2")
    ax2.set_ylabel("server RSS (MiB)")
    ax2.set_xlabel("seconds since the soak began")
    for ax in (ax1, ax2):
        ax.axvline(warmup, color="k", ls=":", lw=1)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="target a running server (loopback only) instead of starting one")
    ap.add_argument("--token", help="bearer token for --url (else minted with --data-dir's local issuer key)")
    ap.add_argument("--data-dir", type=Path, help="the --url server's FACEREC_DATA_DIR, to mint a token")
    ap.add_argument("--pid", type=int, help="the --url server's process id, for RSS sampling")
    ap.add_argument("--duration", type=float, default=600.0, help="soak seconds (default 600)")
    ap.add_argument("--rate", type=float, help="compares per second; default: --fraction of the measured max")
    ap.add_argument("--fraction", type=float, default=0.8, help="share of the max throughput (default 0.8)")
    ap.add_argument("--burst-s", type=float, default=20.0, help="closed-loop measurement seconds (default 20)")
    ap.add_argument("--concurrency", type=int, default=16, help="clients of the measurement (default 16)")
    ap.add_argument("--warmup", type=float, help="seconds excluded from the criteria (default 60, or 20 %% "
                    "of --duration when shorter than 300 s)")
    ap.add_argument("--window", type=float, help="latency window seconds (default 30, 15 for runs < 300 s)")
    ap.add_argument("--sample-s", type=float, default=2.0, help="RSS sampling period (default 2 s)")
    ap.add_argument("--timeout", type=float, default=30.0, help="per-request client timeout (default 30 s)")
    ap.add_argument("--max-inflight", type=int, default=256)
    ap.add_argument("--folder", type=Path, help="image folder (default ../shared/faces)")
    ap.add_argument("--pairs", type=Path, help="CSV of pairs instead of --folder")
    ap.add_argument("--results", type=Path, default=RESULTS, help="output folder (default bench/results)")
    args = ap.parse_args(argv)
    if args.duration <= 0 or (args.rate is not None and args.rate <= 0):
        ap.error("--duration and --rate must be > 0")
    short = args.duration < 300
    args.warmup = args.warmup if args.warmup is not None else (0.2 * args.duration if short else 60.0)
    args.window = args.window if args.window is not None else (15.0 if short else 30.0)
    if args.warmup + args.window > args.duration:
        ap.error("--duration must cover --warmup plus at least one --window")
    return args


async def run_against(url: str, token: str, pid: int | None, args: argparse.Namespace,
                      server_env: dict[str, str] | None) -> int:
    pairs, source = load_pairs(args.folder, args.pairs)
    sender = Sender(url, token, pairs, connections=args.max_inflight, timeout=args.timeout)
    try:
        measured = None
        rate = args.rate
        if rate is None:
            print(f"measuring max throughput: closed loop, {args.concurrency} clients, {args.burst_s:.0f} s",
                  flush=True)
            measured = await burst(sender, args.concurrency, args.burst_s)
            if measured["throughput"] <= 0:
                print(f"error: no successful compare during the measurement: {measured['statuses']}")
                return 1
            rate = args.fraction * measured["throughput"]
            print(f"  max {measured['throughput']:.2f} compares/s -> soak at {rate:.2f}/s", flush=True)
        print(f"soak: {args.duration:.0f} s at {rate:.2f} compares/s (warm-up {args.warmup:.0f} s, "
              f"windows of {args.window:.0f} s, RSS of pid {pid if pid else '-'})", flush=True)
        started = time.time()
        run = await soak(sender, rate, args.duration, pid, args.sample_s, args.max_inflight)
    finally:
        await sender.aclose()
    wins = windows(run, args.duration, args.warmup, args.window)
    rss = rss_growth(run, args.warmup, args.window)
    result = verdict(run, wins, rss)
    ok_lat = [r.latency * 1000 for r in run.records if r.status == "200"]
    doc = {
        "tool": "bench.soak", "started": started, "machine": machine_info(), "target": url, "pairs": source,
        "server_env": server_env, "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "max_throughput": measured, "rate": rate,
        "requests": len(run.records), "client_dropped": run.client_dropped,
        "achieved_rate": len(run.records) / args.duration,
        "latency_ms": {"p50": float(np.percentile(ok_lat, 50)) if ok_lat else None,
                       "p99": float(np.percentile(ok_lat, 99)) if ok_lat else None,
                       "max": max(ok_lat) if ok_lat else None},
        "windows": wins, "rss": rss, "rss_samples": [(round(t, 2), v) for t, v in run.rss], **result,
    }
    out = write_json(args.results / "soak.json", doc)
    png = plot(args.results / "soak.png", run, wins, args.warmup, rate)
    print(f"\n{len(run.records)} requests, statuses {result['statuses']}, client-dropped {run.client_dropped}")
    for w in wins:
        p99 = f"{w['p99_ms']:.0f}" if w["p99_ms"] is not None else "-"
        print(f"  window {w['start_s']:6.0f}-{w['end_s']:<6.0f} s: {w['requests']:5d} req, p99 {p99} ms, "
              f"5xx {w['errors_5xx']}")
    c = result["checks"]
    ratio = c["p99_stable"]["second_over_first_half"]
    halves = c["p99_stable"]["half_p99_ms"]
    growth = c["rss_growth"]["growth"]
    print("criteria:")
    print(f"  [{'PASS' if c['zero_5xx']['pass'] else 'FAIL'}] zero 5xx: {c['zero_5xx']['5xx']} 5xx, "
          f"{c['zero_5xx']['transport_errors']} transport errors")
    half_text = f" ({halves[0]:.0f} -> {halves[1]:.0f} ms)" if halves else ""
    print(f"  [{'PASS' if c['p99_stable']['pass'] else 'FAIL'}] p99 stable: second/first half = "
          f"{f'{ratio:.2f}' if ratio is not None else 'n/a'}{half_text} (limit {P99_STABILITY})")
    print(f"  [{'PASS' if c['rss_growth']['pass'] else 'FAIL'}] RSS growth after warm-up: "
          f"{f'{growth * 100:+.1f} %' if growth is not None else 'n/a'} ({rss['start_mib']} -> "
          f"{rss['end_mib']} MiB, limit {RSS_GROWTH_LIMIT * 100:.0f} %)")
    print(f"{'PASS' if result['pass'] else 'FAIL'}; wrote {out}" + (f" and {png}" if png else ""))
    return 0 if result["pass"] else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.url:
        require_loopback(args.url)
        if args.token:
            token = args.token
        elif args.data_dir:
            token = mint_token(args.data_dir)
        else:
            raise SystemExit("error: --url needs --token or --data-dir (to mint one with the local issuer)")
        if args.pid is None:
            print("note: no --pid: resident memory is not sampled and the RSS criterion fails", file=sys.stderr)
        return asyncio.run(run_against(args.url.rstrip("/"), token, args.pid, args, None))
    env = {"FACEREC_BACKEND": "onnxruntime"}
    with bench_server(env, grpc=False) as server:
        assert server.proc is not None
        print(f"started facerec serve (pid {server.proc.pid}) on {server.url}", flush=True)
        token = mint_token(server.data_dir)
        return asyncio.run(run_against(server.url, token, server.proc.pid, args, env))


if __name__ == "__main__":
    sys.exit(main())
