"""Issue-10 throughput targets in one run: HTTP pairs/s of this checkout vs an older one and vs the OpenCV loop.

    python -m bench.throughput --before ../facerec-f097b5c      # a checkout of the older commit, models built
    python -m bench.throughput --limit 100 --rounds 1          # quicker

For each round it serves every checkout in turn (``facerec serve`` from that tree, its own defaults, a temporary
SQLite store), drives HTTP at concurrency 1 and 8 over the same labelled pairs (``../shared/lfw-dev`` by default),
stops it, then runs the bare OpenCV YuNet + SFace loop (``bench.peers``) on the same pairs. Rounds interleave the
trees so that drift on a shared machine hits both sides alike; the report keeps each round and the median. The
targets are ratios measured here: this checkout >= 2.5x the older one at concurrency 8, >= 2x the OpenCV loop, and
a p50 at concurrency 1 not worse than the older one's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_LFW_PAIRS, RESULTS, Pair, load_pairs, machine_info, table, write_json
from tooling.serve import PROJECT_ROOT, ServeProcess

TARGETS = {"vs_before_c8": 2.5, "vs_opencv_c8": 2.0}


def serve_and_load(tree: Path, pairs: list[Pair], *, concurrency: list[int], requests: int, duration: float,
                   label: str) -> dict[str, Any]:
    """HTTP steps against ``facerec serve`` run from ``tree`` with that tree's own defaults."""
    from bench.load import run_steps

    with tempfile.TemporaryDirectory(prefix="facerec-throughput-") as tmp:
        # workers=None: no --workers flag, so an older tree (which has none) and this one both use their default.
        server = ServeProcess(Path(tmp), project_root=tree, workers=None, ready_path="/health/ready")
        try:
            server.start(timeout_s=300.0)
            token = server.token()
            steps = asyncio.run(run_steps(
                protocol="http", url=server.url, grpc_target=server.grpc_target, token=token, pairs=pairs,
                concurrency=concurrency, rates=[], requests=requests, duration=duration, warmup=8,
                request_timeout=120.0, max_inflight=64, label=label,
                server_pid=server.proc.pid if server.proc else None))
        finally:
            server.stop()
    return {f"c{int(s['concurrency'])}": s for s in steps}


def opencv_loop(pairs: list[Pair], repository: Path) -> dict[str, Any]:
    from bench.peers import run_opencv

    r = run_opencv(pairs, repository=repository, threads=2, progress=False)
    found = sum(c is not None for c in r["cosines"])
    return {"pairs_per_s": r["pairs_per_s"], "cpu_s": r["cpu_s"], "elapsed_s": r["elapsed_s"], "compared": found}


def median_of(rounds: list[dict[str, Any]], *path: str) -> float:
    values = []
    for r in rounds:
        v: Any = r
        for key in path:
            v = v[key]
        values.append(float(v))
    return statistics.median(values)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, help="checkout of the older commit (its .venv and models built)")
    ap.add_argument("--pairs", type=Path, default=DEFAULT_LFW_PAIRS)
    ap.add_argument("--limit", type=int, default=200, help="first N pairs")
    ap.add_argument("--requests", type=int, default=200, help="at most this many requests per step")
    ap.add_argument("--duration", type=float, default=40.0, help="at most this many seconds per step")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "throughput.json")
    args = ap.parse_args(argv)

    pairs, source = load_pairs(None, args.pairs, None, args.limit)
    trees = {"after": PROJECT_ROOT} | ({"before": args.before.resolve()} if args.before else {})
    rounds: list[dict[str, Any]] = []
    for k in range(args.rounds):
        # Alternate which tree goes first, so neither always runs on a machine warmed (or loaded) by the other.
        order = list(trees.items()) if k % 2 == 0 else list(reversed(trees.items()))
        entry: dict[str, Any] = {}
        for name, tree in order:
            entry[name] = serve_and_load(tree, pairs, concurrency=[1, 8], requests=args.requests,
                                         duration=args.duration, label=f"{name} r{k} ")
        entry["opencv"] = opencv_loop(pairs, PROJECT_ROOT / "model_repository")
        print(f"round {k}: " + ", ".join(
            f"{n} c8 {entry[n]['c8']['pairs_per_s']:.1f}/s" for n in trees) +
            f", opencv {entry['opencv']['pairs_per_s']:.1f}/s", file=sys.stderr, flush=True)
        rounds.append(entry)

    summary: dict[str, Any] = {}
    for name in trees:
        summary[name] = {
            "c1_pairs_per_s": median_of(rounds, name, "c1", "pairs_per_s"),
            "c1_p50_ms": median_of(rounds, name, "c1", "latency_ms", "p50"),
            "c8_pairs_per_s": median_of(rounds, name, "c8", "pairs_per_s"),
            "c8_p50_ms": median_of(rounds, name, "c8", "latency_ms", "p50"),
        }
    summary["opencv"] = {"pairs_per_s": median_of(rounds, "opencv", "pairs_per_s")}
    ratios = {"vs_opencv_c8": summary["after"]["c8_pairs_per_s"] / summary["opencv"]["pairs_per_s"]}
    if "before" in trees:
        ratios["vs_before_c8"] = summary["after"]["c8_pairs_per_s"] / summary["before"]["c8_pairs_per_s"]
        ratios["c1_p50_after_over_before"] = summary["after"]["c1_p50_ms"] / summary["before"]["c1_p50_ms"]
    met = {k: ratios[k] >= t for k, t in TARGETS.items() if k in ratios}
    if "c1_p50_after_over_before" in ratios:
        met["c1_p50_not_worse"] = ratios["c1_p50_after_over_before"] <= 1.0
    report = {"machine": machine_info(), "pairs": source, "n_pairs": len(pairs), "trees": {k: str(v) for k, v in
              trees.items()}, "rounds": rounds, "summary": summary, "ratios": ratios, "targets": TARGETS,
              "met": met}
    write_json(args.out, report)
    rows = [[n, f"{s['c1_pairs_per_s']:.1f}", f"{s['c1_p50_ms']:.0f}", f"{s['c8_pairs_per_s']:.1f}",
             f"{s['c8_p50_ms']:.0f}"] for n, s in summary.items() if n != "opencv"]
    rows.append(["opencv loop", "", "", f"{summary['opencv']['pairs_per_s']:.1f}", ""])
    print(table(rows, ["tree", "c1 pairs/s", "c1 p50 ms", "c8 pairs/s", "c8 p50 ms"]))
    print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()) + f"; met: {met}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
