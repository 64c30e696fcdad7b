"""PNG plots of a ``python -m bench`` run (matplotlib, from the bench extra; skipped when it is missing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _plt() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _ticks(ax: Any, values: list[int]) -> None:
    """Plain tick labels (1, 2, 4, ...) on a log2 axis."""
    vals = sorted(set(values))
    ax.set_xticks(vals, [str(v) for v in vals])
    ax.minorticks_off()


def _closed(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in steps if s["mode"] == "closed"]


def throughput(series: dict[str, list[dict[str, Any]]], raw_best: float | None, path: Path) -> Path | None:
    plt = _plt()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, steps in series.items():
        st = _closed(steps)
        if st:
            ax.plot([s["concurrency"] for s in st], [s["pairs_per_s"] for s in st], marker="o", label=label)
    if raw_best:
        ax.axhline(raw_best, color="k", ls="--", lw=1, label=f"raw in-process bound ({raw_best:.1f})")
        ax.axhline(0.85 * raw_best, color="k", ls=":", lw=1, label="85 % of raw")
    ax.set_xscale("log", base=2)
    _ticks(ax, [s["concurrency"] for st in series.values() for s in _closed(st)])
    ax.set_xlabel("concurrent clients (closed loop)")
    ax.set_ylabel("pairs / s")
    ax.set_ylim(bottom=0)
    ax.set_title("Throughput vs concurrency")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency(series: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    plt = _plt()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = ["-", "--", ":", "-."]
    for (label, steps), ls in zip(series.items(), styles, strict=False):
        st = _closed(steps)
        if not st:
            continue
        c = [s["concurrency"] for s in st]
        for q, colour in (("p50", "#1f77b4"), ("p95", "#ff7f0e"), ("p99", "#d62728")):
            ax.plot(c, [s["latency_ms"][q] for s in st], ls=ls, marker=".", color=colour, label=f"{label} {q}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _ticks(ax, [s["concurrency"] for st in series.values() for s in _closed(st)])
    ax.set_xlabel("concurrent clients (closed loop)")
    ax.set_ylabel("latency, ms")
    ax.set_title("Latency percentiles vs concurrency")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def batching(on: list[dict[str, Any]], off: list[dict[str, Any]], path: Path) -> Path | None:
    plt = _plt()
    if plt is None:
        return None
    on_c = {s["concurrency"]: s for s in _closed(on)}
    off_c = {s["concurrency"]: s for s in _closed(off)}
    cs = sorted(set(on_c) & set(off_c))
    if not cs:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    x = range(len(cs))
    w = 0.4
    ax1.bar([i - w / 2 for i in x], [on_c[c]["pairs_per_s"] for c in cs], w, label="batching on (max 16)")
    ax1.bar([i + w / 2 for i in x], [off_c[c]["pairs_per_s"] for c in cs], w, label="batching off (max 1)")
    for i, c in enumerate(cs):
        r = on_c[c]["pairs_per_s"] / max(off_c[c]["pairs_per_s"], 1e-9)
        ax1.text(i, max(on_c[c]["pairs_per_s"], off_c[c]["pairs_per_s"]) * 1.02, f"{r:.2f}x", ha="center",
                 fontsize=8)
    ax1.set_ylim(0, 1.3 * max(max(on_c[c]["pairs_per_s"], off_c[c]["pairs_per_s"]) for c in cs))
    ax1.set_xticks(list(x), [str(c) for c in cs])
    ax1.set_xlabel("concurrent clients")
    ax1.set_ylabel("pairs / s")
    ax1.set_title("Throughput, batching on vs off (HTTP)")
    ax1.legend(fontsize=8, loc="upper left", ncol=2)
    ax2.plot(cs, [on_c[c]["latency_ms"]["p50"] for c in cs], marker="o", label="on p50")
    ax2.plot(cs, [off_c[c]["latency_ms"]["p50"] for c in cs], marker="o", ls="--", label="off p50")
    ax2.plot(cs, [on_c[c]["latency_ms"]["p99"] for c in cs], marker=".", label="on p99")
    ax2.plot(cs, [off_c[c]["latency_ms"]["p99"] for c in cs], marker=".", ls="--", label="off p99")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    _ticks(ax2, cs)
    ax2.set_xlabel("concurrent clients")
    ax2.set_ylabel("latency, ms")
    ax2.set_title("Latency, batching on vs off")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def raw_profile(raw: dict[str, Any], path: Path) -> Path | None:
    """Left: raw pairs/s per batch size; right: where a pair's time goes per batch size (stacked ms)."""
    plt = _plt()
    if plt is None:
        return None
    steps = [s for s in raw["steps"] if s["inflight"] == 1]
    if not steps:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot([s["batch_pairs"] for s in steps], [s["pairs_per_s"] for s in steps], marker="o")
    ax1.set_xscale("log", base=2)
    _ticks(ax1, [s["batch_pairs"] for s in steps])
    ax1.set_xlabel("pairs per pipeline batch")
    ax1.set_ylabel("pairs / s")
    ax1.set_ylim(bottom=0)
    ax1.set_title("In-process pipeline (no server)")
    ax1.grid(alpha=0.3)
    names = list(steps[0]["profile"]["stages"])
    x = range(len(steps))
    bottom = [0.0] * len(steps)
    cmap = plt.get_cmap("tab20")
    for k, name in enumerate(names):
        vals = [s["profile"]["stages"].get(name, {}).get("ms_per_pair", 0.0) for s in steps]
        ax2.bar(list(x), vals, bottom=bottom, label=name, color=cmap(k % 20))
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax2.set_xticks(list(x), [str(s["batch_pairs"]) for s in steps])
    ax2.set_xlabel("pairs per pipeline batch")
    ax2.set_ylabel("ms per pair")
    ax2.set_title("Where a pair's time goes")
    ax2.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def host_workers(host: dict[str, Any], path: Path) -> Path | None:
    """Host-bound throughput (``bench.host``: inference replayed, everything else real) against worker processes.

    Left: pairs/s per core, 1000 / CPU ms per pair: flat when every worker process costs the same CPU per pair
    (host work scales with processes). Right: pairs/s of all workers together against the linear ideal from one
    worker; on a shared machine the gap is the cores other processes took (noted per point).
    """
    plt = _plt()
    if plt is None:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    workers_seen: list[int] = []
    for name, ds in host.get("datasets", {}).items():
        runs = sorted((r for r in ds.get("runs", []) if r.get("store", "none") == "none"),
                      key=lambda r: int(r["workers"]))
        if not runs:
            continue
        w = [int(r["workers"]) for r in runs]
        workers_seen += w
        size = ds.get("image_size") or (f"{ds['megapixels_mean']:.1f} MP" if "megapixels_mean" in ds else "")
        label = f"{name} ({size})" if size else name
        ax1.plot(w, [r["pairs_per_s_per_core"] for r in runs], marker="o", label=label)
        line = ax2.plot(w, [r["pairs_per_s"] for r in runs], marker="o", label=label)[0]
        ax2.plot(w, [runs[0]["pairs_per_s"] * n / w[0] for n in w], ls=":", color=line.get_color(),
                 label=f"{name}: linear from {w[0]} worker")
        for r in runs:
            other = r.get("other_cpu_cores")
            if other is not None:
                ax2.annotate(f"other {other:.1f} cores", (int(r["workers"]), r["pairs_per_s"]), fontsize=6,
                             textcoords="offset points", xytext=(4, -10))
    if not workers_seen:
        plt.close(fig)
        return None
    for ax in (ax1, ax2):
        ax.set_xticks(sorted(set(workers_seen)))
        ax.set_xlabel("worker processes")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax1.set_ylabel("pairs / s per core (1000 / CPU ms per pair)")
    ax1.set_title("Host bound per core")
    ax2.set_ylabel("pairs / s, all workers")
    ax2.set_title("Host bound, all workers together")
    machine = host.get("machine", {})
    fig.suptitle(f"bench.host: inference replayed ({machine.get('cores', '?')} cores, {machine.get('date', '')[:10]})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.plots host [HOST_JSON] [OUT_PNG]``: redraw the host-bound plot from bench.host's JSON."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "host":
        print("usage: python -m bench.plots host [bench/results/host.json] [bench/results/host_workers.png]",
              file=sys.stderr)
        return 2
    results = Path(__file__).resolve().parent / "results"
    src = Path(args[1]) if len(args) > 1 else results / "host.json"
    out = Path(args[2]) if len(args) > 2 else results / "host_workers.png"
    written = host_workers(json.loads(src.read_text()), out)
    if written is None:
        print("no plot: matplotlib missing (bench extra) or no runs in the file", file=sys.stderr)
        return 1
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
