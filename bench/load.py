"""Load generator against a running facerec server (loopback only), over HTTP or gRPC.

    python -m bench.load --url http://127.0.0.1:8000 --token "$TOKEN" --concurrency 1,2,4,8,16,32,64
    python -m bench.load --protocol grpc --grpc-target 127.0.0.1:50051 --data-dir ~/.local/share/facerec
    python -m bench.load --rate 2,4,8 --duration 30          # open loop: Poisson arrivals at R pairs/s

Closed loop (``--concurrency``): C clients each send the next compare as soon as their last one returns. Open loop
(``--rate``): requests start at exponential inter-arrival times whatever the server does; latency is counted from
the scheduled start, so a backlog shows as latency (no coordinated omission). Every step is bounded by both
``--requests`` and ``--duration``. Pairs: all pairs of ``--folder`` (default ``../shared/faces``, faceless images
skipped) or a ``--pairs`` CSV (``file1,file2[,same]``). ``/metrics`` is scraped before and after each step for the
mean batch size, queue time and inference time per model.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS,
    CpuMeter,
    Pair,
    Progress,
    Samples,
    csv_floats,
    csv_ints,
    latency_summary,
    load_pairs,
    machine_info,
    mint_token,
    parse_metrics,
    require_loopback,
    server_stats,
    table,
    write_json,
)

OK = ("200", "OK")

Send = Callable[[int], Awaitable[str]]


@dataclass(slots=True)
class StepResult:
    latencies: list[float]
    statuses: collections.Counter[str]
    elapsed: float
    dropped: int = 0


# ----------------------------------------------------------------------------------------------- transports


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as the epilog, and every option's default in its help."""


class HttpClient:
    """Compares over HTTP with the typed client (facerec_client.AsyncClient, one pooled connection per client).

    Overload answers are not retried (NO_RETRY): the benchmark counts every 429/503 as the server gave it.
    """

    def __init__(self, url: str, token: str, pairs: list[Pair], connections: int, timeout: float) -> None:
        import httpx
        from facerec_client import NO_RETRY, AsyncClient

        self.pairs = pairs
        self.api = AsyncClient(url, token, timeout=timeout, retry=NO_RETRY,
                               limits=httpx.Limits(max_connections=connections,
                                                   max_keepalive_connections=connections))
        self._transport_errors: tuple[type[BaseException], ...] = (httpx.HTTPError,)

    async def send(self, i: int) -> str:
        from facerec_client import ApiError

        p = self.pairs[i % len(self.pairs)]
        try:
            await self.api.compare(p.a.data, p.b.data, channel="OTHER", reference=f"bench-{i}")
        except ApiError as exc:
            return str(exc.status)
        except self._transport_errors as exc:
            return type(exc).__name__
        return "200"

    async def aclose(self) -> None:
        await self.api.aclose()


class GrpcClient:
    """CompareFaces with the typed client (facerec_client.AsyncGrpcClient); the token travels as metadata.

    ``connections`` channels, each its own TCP connection (a local subchannel pool: by default gRPC shares one
    connection between channels to the same target), used in turn. With ``facerec serve --workers N`` the kernel
    spreads connections, not calls, over the workers: one HTTP/2 connection would load a single worker, as one
    channel of a real client does (clients that want the whole group open several, or go through a balancer).
    """

    def __init__(self, target: str, token: str, pairs: list[Pair], timeout: float, connections: int = 1) -> None:
        import grpc
        from facerec_client import NO_RETRY, AsyncGrpcClient
        from facerec_client.grpc import CHANNEL_OPTIONS

        self.pairs = pairs
        options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        self.apis = [AsyncGrpcClient(target, token, timeout=timeout, retry=NO_RETRY, options=options)
                     for _ in range(max(1, connections))]
        self._error = grpc.aio.AioRpcError

    async def send(self, i: int) -> str:
        from facerec_client import ApiError

        p = self.pairs[i % len(self.pairs)]
        try:
            await self.apis[i % len(self.apis)].compare(p.a.data, p.b.data, channel="OTHER", reference=f"bench-{i}")
        except ApiError as exc:
            return str(exc.grpc_code)
        except self._error as exc:
            return str(exc.code().name)
        return "OK"

    async def aclose(self) -> None:
        for api in self.apis:
            await api.aclose()


# ----------------------------------------------------------------------------------------------- load shapes


async def closed_loop(send: Send, concurrency: int, max_requests: int, duration: float,
                      progress: Progress, start_index: int = 0) -> StepResult:
    """``concurrency`` clients back to back until ``max_requests`` were issued or ``duration`` passed."""
    lat: list[float] = []
    statuses: collections.Counter[str] = collections.Counter()
    issued = 0
    t_start = time.perf_counter()
    deadline = t_start + duration
    last_done = t_start

    async def client() -> None:
        nonlocal issued, last_done
        while issued < max_requests and time.perf_counter() < deadline:
            i = start_index + issued
            issued += 1
            t0 = time.perf_counter()
            status = await send(i)
            last_done = time.perf_counter()
            statuses[status] += 1
            if status in OK:
                lat.append(last_done - t0)
            progress.update(1, err=sum(v for k, v in statuses.items() if k not in OK))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return StepResult(lat, statuses, max(last_done - t_start, 1e-9))


async def open_loop(send: Send, rate: float, max_requests: int, duration: float, progress: Progress,
                    max_inflight: int, start_index: int = 0, seed: int = 1) -> StepResult:
    """Poisson arrivals at ``rate`` per second; latency counted from each request's scheduled start."""
    rng = random.Random(seed)
    lat: list[float] = []
    statuses: collections.Counter[str] = collections.Counter()
    tasks: set[asyncio.Task[None]] = set()
    dropped = 0
    t_start = time.perf_counter()
    last_done = t_start

    async def one(i: int, scheduled: float) -> None:
        nonlocal last_done
        status = await send(i)
        last_done = time.perf_counter()
        statuses[status] += 1
        if status in OK:
            lat.append(last_done - scheduled)
        progress.update(1, inflight=len(tasks))

    scheduled = t_start
    for n in range(max_requests):
        scheduled += rng.expovariate(rate)
        if scheduled - t_start > duration:
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= max_inflight:
            dropped += 1  # the client itself could not keep up; reported, never silently skipped
            progress.update(1)
            continue
        task = asyncio.create_task(one(start_index + n, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    return StepResult(lat, statuses, max(last_done - t_start, 1e-9), dropped)


# ----------------------------------------------------------------------------------------------- runner


async def scrape(url: str) -> Samples | None:
    import httpx

    try:
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.get(f"{url}/metrics")
        return parse_metrics(r.text) if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


def summarize(step: StepResult, *, protocol: str, mode: str, level: float) -> dict[str, Any]:
    ok = sum(v for k, v in step.statuses.items() if k in OK)
    total = sum(step.statuses.values())
    return {
        "protocol": protocol, "mode": mode, ("concurrency" if mode == "closed" else "rate"): level,
        "requests": total, "ok": ok, "errors": {k: v for k, v in step.statuses.items() if k not in OK},
        "dropped_by_client": step.dropped, "elapsed_s": step.elapsed,
        "pairs_per_s": ok / step.elapsed, "latency_ms": latency_summary(step.latencies),
    }


async def run_steps(*, protocol: str, url: str, grpc_target: str, token: str, pairs: list[Pair],
                    concurrency: list[int], rates: list[float], requests: int, duration: float,
                    warmup: int, request_timeout: float, max_inflight: int, show_progress: bool = True,
                    label: str = "", server_pid: int | None = None,
                    grpc_connections: int = 1) -> list[dict[str, Any]]:
    """Run each step (closed-loop levels, then open-loop rates) and return one summary per step; gRPC calls
    spread over ``grpc_connections`` connections (one per server worker spreads them over the workers)."""
    conns = max([*concurrency, max_inflight if rates else 1, 1])
    client: HttpClient | GrpcClient
    if protocol == "http":
        client = HttpClient(url, token, pairs, conns, request_timeout)
    else:
        client = GrpcClient(grpc_target, token, pairs, request_timeout, grpc_connections)
    results: list[dict[str, Any]] = []
    index = 0
    try:
        levels: list[tuple[str, float]] = [("closed", c) for c in concurrency] + [("open", r) for r in rates]
        for mode, level in levels:
            n_warm = max(warmup, int(level) if mode == "closed" else 0)
            if n_warm:  # warm connections, sessions and batchers; not counted
                quiet = Progress(n_warm, "warm-up", enabled=False)
                await closed_loop(client.send, min(n_warm, int(level) if mode == "closed" else 2), n_warm,
                                  duration, quiet, start_index=index)
                index += n_warm
            before = await scrape(url)
            meter = CpuMeter(server_pid)
            desc = f"{label}{protocol} {'c' if mode == 'closed' else 'rate '}={level:g}"
            prog = Progress(requests, desc, enabled=show_progress)
            if mode == "closed":
                step = await closed_loop(client.send, int(level), requests, duration, prog, start_index=index)
            else:
                step = await open_loop(client.send, level, requests, duration, prog, max_inflight,
                                       start_index=index)
            prog.close()
            index += sum(step.statuses.values()) + step.dropped
            cpu = meter.read()
            after = await scrape(url)
            res = summarize(step, protocol=protocol, mode=mode, level=level)
            # Cores kept busy during the step: the load generator shares the machine with the server, and any
            # other work on the machine ("other") takes CPU from both and skews the step.
            res["client_cpu_cores"] = cpu["self_cpu_cores"]
            res["server_cpu_cores"] = cpu["server_cpu_cores"]
            res["other_cpu_cores"] = cpu["other_cpu_cores"]
            res["server"] = server_stats(before, after) if before is not None and after is not None else None
            if res["server"]:
                for m in ("detector", "landmarker", "embedder"):
                    # Share of the step each model's single batch worker spent running batches.
                    res["server"][m]["busy_share"] = res["server"][m]["inference_seconds"] / step.elapsed
            results.append(res)
            print(step_line(res), file=sys.stderr, flush=True)
    finally:
        await client.aclose()
    return results


def step_line(r: dict[str, Any]) -> str:
    lvl = f"c={r['concurrency']:g}" if r["mode"] == "closed" else f"rate={r['rate']:g}/s"
    lat = r["latency_ms"]
    srv = r.get("server") or {}
    batch = (srv.get("detector") or {}).get("mean_batch_size")
    errs = ",".join(f"{k}:{v}" for k, v in r["errors"].items()) or "0"
    p50 = "-" if lat["p50"] is None else f"{lat['p50']:.0f}"
    p99 = "-" if lat["p99"] is None else f"{lat['p99']:.0f}"
    b = "-" if batch is None else f"{batch:.1f}"
    cpu = f"  cpu client {r['client_cpu_cores']:.2f}" if "client_cpu_cores" in r else ""
    if r.get("server_cpu_cores") is not None:
        cpu += f" server {r['server_cpu_cores']:.2f}"
    if r.get("other_cpu_cores") is not None:
        cpu += f" other {r['other_cpu_cores']:.2f} cores"
    return (f"  {r['protocol']:4s} {lvl:>10s}: {r['pairs_per_s']:6.2f} pairs/s  p50 {p50} ms  p99 {p99} ms  "
            f"errors {errs}  detector batch {b}{cpu}")


def results_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        lat, srv = r["latency_ms"], r.get("server") or {}
        lvl = r["concurrency"] if r["mode"] == "closed" else f"{r['rate']:g}/s"
        rows.append([r["protocol"], r["mode"], lvl, r["ok"], sum(r["errors"].values()), r["pairs_per_s"],
                     lat["p50"], lat["p90"], lat["p95"], lat["p99"], lat["max"],
                     *((srv.get(m) or {}).get("mean_batch_size") for m in ("detector", "landmarker", "embedder")),
                     (srv.get("detector") or {}).get("mean_queue_ms"),
                     (srv.get("embedder") or {}).get("mean_inference_ms"),
                     r.get("client_cpu_cores"), r.get("server_cpu_cores"), r.get("other_cpu_cores")])
    return table(rows, ["proto", "mode", "level", "ok", "err", "pairs/s", "p50 ms", "p90", "p95", "p99", "max",
                        "det batch", "lmk batch", "emb batch", "det queue ms", "emb infer ms", "client cpu",
                        "server cpu", "other cpu"])


def resolve_token(args: argparse.Namespace) -> str:
    if args.token:
        return str(args.token)
    if os.environ.get("FACEREC_TOKEN"):
        return os.environ["FACEREC_TOKEN"]
    if args.data_dir:
        return mint_token(Path(args.data_dir).expanduser())
    raise SystemExit("error: no token: pass --token, set FACEREC_TOKEN, or give the server's --data-dir "
                     "(local issuer) so one can be minted with `facerec token`")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0],
                                 formatter_class=HelpFormatter, epilog=__doc__)
    ap.add_argument("--protocol", choices=("http", "grpc", "both"), default="http")
    ap.add_argument("--grpc-connections", type=int, default=1,
                    help="gRPC connections to spread calls over (with `serve --workers N`, at least N)")
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="HTTP base URL (also used for /metrics)")
    ap.add_argument("--grpc-target", help="host:port of the gRPC server (default: the URL's host, port 50051)")
    ap.add_argument("--token", help="bearer token (default: $FACEREC_TOKEN, or minted with --data-dir)")
    ap.add_argument("--data-dir", help="the server's FACEREC_DATA_DIR, to mint a token with the local issuer")
    ap.add_argument("--concurrency", type=csv_ints, help="closed-loop levels, e.g. 1,2,4,8,16,32,64")
    ap.add_argument("--rate", type=csv_floats, default=[], help="open-loop arrival rates in pairs/s, e.g. 2,4,8")
    ap.add_argument("--requests", type=int, default=200, help="at most this many requests per step")
    ap.add_argument("--duration", type=float, default=30.0, help="at most this many seconds per step")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured requests before each step (at least C)")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    ap.add_argument("--max-inflight", type=int, default=512, help="open loop: cap on outstanding requests")
    ap.add_argument("--folder", type=Path, help="all pairs of this folder's images (default ../shared/faces)")
    ap.add_argument("--pairs", type=Path, help="CSV file1,file2[,same] instead of a folder")
    ap.add_argument("--root", type=Path, help="image root for --pairs (default: the CSV's folder)")
    ap.add_argument("--limit", type=int, help="use at most this many pairs")
    ap.add_argument("--out", type=Path, help="JSON output (default bench/results/load_<protocol>.json)")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    host = require_loopback(args.url)
    grpc_target = args.grpc_target or f"{'[::1]' if host == '::1' else host}:50051"
    if args.protocol != "http":
        require_loopback(grpc_target)
    concurrency = args.concurrency if args.concurrency is not None else ([] if args.rate else [1, 2, 4, 8, 16])
    token = resolve_token(args)
    pairs, source = load_pairs(args.folder, args.pairs, args.root, args.limit)
    print(f"{len(pairs)} pairs from {source}", file=sys.stderr)
    protocols = ["http", "grpc"] if args.protocol == "both" else [args.protocol]
    results: list[dict[str, Any]] = []
    for proto in protocols:
        results += asyncio.run(run_steps(
            protocol=proto, url=args.url.rstrip("/"), grpc_target=grpc_target, token=token, pairs=pairs,
            concurrency=concurrency, rates=args.rate, requests=args.requests, duration=args.duration,
            warmup=args.warmup, request_timeout=args.timeout, max_inflight=args.max_inflight,
            show_progress=not args.no_progress, grpc_connections=args.grpc_connections))
    print(results_table(results))
    out = args.out or RESULTS / f"load_{args.protocol}.json"
    write_json(out, {"machine": machine_info(), "target": args.url, "grpc_target": grpc_target,
                     "pairs_source": source, "pairs": len(pairs), "requests_per_step": args.requests,
                     "duration_per_step_s": args.duration, "steps": results})
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
