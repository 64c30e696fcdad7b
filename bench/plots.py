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
