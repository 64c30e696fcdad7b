"""Shared helpers of the bench tools: image pairs, loopback checks, tokens, the server process, metrics, reports."""

from __future__ import annotations

import contextlib
import csv
import importlib.metadata
import ipaddress
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from tooling.serve import ServeProcess

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEFAULT_FACES = SHARED / "faces"
DEFAULT_LFW_PAIRS = SHARED / "lfw-dev" / "pairs.csv"
RESULTS = ROOT / "bench" / "results"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MODELS = ("detector", "landmarker", "embedder")


# ----------------------------------------------------------------------------------------------- image pairs


@dataclass(frozen=True, slots=True)
class Image:
    name: str  # path relative to the folder / CSV root
    data: bytes

    @property
    def mime(self) -> str:
        ext = Path(self.name).suffix.lower()
        return {".png": "image/png", ".webp": "image/webp", ".bmp": "image/bmp"}.get(ext, "image/jpeg")


@dataclass(frozen=True, slots=True)
class Pair:
    a: Image
    b: Image
    same: int | None = None  # 1 same person, 0 different, None unknown


def folder_images(folder: Path, *, recursive: bool = False, limit: int | None = None) -> list[Path]:
    """Image files of a folder, sorted, skipping ``no_face_*`` (the fixtures' faceless photos)."""
    if not folder.is_dir():
        raise SystemExit(f"error: image folder {folder} does not exist")
    files = folder.rglob("*") if recursive else folder.iterdir()
    out = sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("no_face"))
    if not out:
        raise SystemExit(f"error: no images in {folder}")
    return out[:limit] if limit else out


def pairs_from_folder(folder: Path, limit: int | None = None) -> list[Pair]:
    """Every unordered pair of the folder's face images (no labels)."""
    imgs = [Image(p.name, p.read_bytes()) for p in folder_images(folder)]
    pairs = [Pair(a, b) for a, b in itertools.combinations(imgs, 2)]
    return pairs[:limit] if limit else pairs


def pairs_from_csv(path: Path, root: Path | None = None, limit: int | None = None) -> list[Pair]:
    """Pairs from a ``file1,file2[,same]`` CSV (with or without a header); paths relative to ``root``."""
    if not path.is_file():
        raise SystemExit(f"error: pairs file {path} does not exist")
    root = root or path.parent
    cache: dict[str, Image] = {}

    def load(name: str) -> Image:
        if name not in cache:
            cache[name] = Image(name, (root / name).read_bytes())
        return cache[name]

    out: list[Pair] = []
    with path.open(newline="") as f:
        for row in csv.reader(f):
            if len(row) < 2 or row[0].strip().lower() == "file1":
                continue
            same = int(row[2]) if len(row) > 2 and row[2].strip() in ("0", "1") else None
            out.append(Pair(load(row[0].strip()), load(row[1].strip()), same))
            if limit and len(out) >= limit:
                break
    if not out:
        raise SystemExit(f"error: no pairs in {path}")
    return out


def load_pairs(folder: Path | None, pairs_csv: Path | None, root: Path | None = None,
               limit: int | None = None) -> tuple[list[Pair], str]:
    """Pairs from ``--pairs`` when given, else all pairs of ``--folder`` (default ``../shared/faces``)."""
    if pairs_csv is not None:
        return pairs_from_csv(pairs_csv, root, limit), str(pairs_csv)
    folder = folder or DEFAULT_FACES
    return pairs_from_folder(folder, limit), str(folder)


# ----------------------------------------------------------------------------------------------- targets, tokens


def require_loopback(target: str) -> str:
    """The host of a URL or ``host:port``; exits unless it is loopback (127.0.0.0/8, ::1, localhost)."""
    host = urlsplit(target if "://" in target else f"//{target}").hostname or ""
    ok = host == "localhost"
    if not ok:
        with contextlib.suppress(ValueError):
            ok = ipaddress.ip_address(host).is_loopback
    if not ok:
        raise SystemExit(f"error: refusing to load-test {target!r}: only loopback targets are allowed "
                         "(127.0.0.0/8, ::1, localhost). Run the load generator on the server's own machine.")
    return host


def facerec_command() -> list[str]:
    """How to run the ``facerec`` CLI of this environment."""
    exe = Path(sys.executable).with_name("facerec")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "server"]


def mint_token(data_dir: Path, company: str = "BENCH", ttl: int = 86_400) -> str:
    """A token from the server's local issuer (``facerec token``), using the key in ``data_dir``."""
    env = {**os.environ, "FACEREC_DATA_DIR": str(data_dir)}
    proc = subprocess.run([*facerec_command(), "token", "--company", company, "--user", "bench", "--ttl", str(ttl)],
                          env=env, capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"error: `facerec token` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().splitlines()[-1]


def bench_server(env: Mapping[str, str], *, grpc: bool = True) -> ServeProcess:
    """A ``facerec serve`` child for one benchmark part (the shared one the tests use too): free loopback ports, a
    temporary data directory and SQLite store, ready once ``/health/ready`` answers; a 5 s drain on stop."""
    return ServeProcess(env={"FACEREC_SHUTDOWN_GRACE_S": "5", **env}, grpc=grpc, ready_path="/health/ready")


# ----------------------------------------------------------------------------------------------- metrics


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    """Prometheus exposition text -> ``{(sample name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def _delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def server_stats(before: Samples, after: Samples) -> dict[str, Any]:
    """Per model over a step: batches, mean batch size, mean queue time per item, mean inference time per batch."""
    out: dict[str, Any] = {}
    for m in MODELS:
        batches = _delta(before, after, "facerec_batch_size_count", model=m)
        items = _delta(before, after, "facerec_batch_size_sum", model=m)
        q_n = _delta(before, after, "facerec_queue_time_seconds_count", model=m)
        q_s = _delta(before, after, "facerec_queue_time_seconds_sum", model=m)
        i_n = _delta(before, after, "facerec_inference_time_seconds_count", model=m)
        i_s = _delta(before, after, "facerec_inference_time_seconds_sum", model=m)
        out[m] = {
            "batches": int(batches), "items": int(items),
            "mean_batch_size": items / batches if batches else None,
            "mean_queue_ms": 1000 * q_s / q_n if q_n else None,
            "mean_inference_ms": 1000 * i_s / i_n if i_n else None,
            "inference_ms_per_item": 1000 * i_s / items if items else None,
            "inference_seconds": i_s,
        }
    rejected = {}
    for (name, labels), _ in after.items():
        if name == "facerec_requests_rejected_total":
            d = _delta(before, after, name, **dict(labels))
            if d:
                rejected[dict(labels).get("reason", "?")] = int(d)
    out["rejected"] = rejected
    return out


def cpu_seconds(pid: int | None = None) -> float | None:
    """User + system CPU seconds of a process (all its threads) and its live descendants (the workers of
    ``facerec serve --workers N``) so far; this process alone when ``pid`` is None."""
    if pid is None:
        return time.process_time()
    total = None
    for p in (pid, *descendants(pid)):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # a child that just exited
        total = (total or 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def descendants(pid: int) -> list[int]:
    """Live child processes of ``pid``, their children, and so on (from /proc/<pid>/task/*/children)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            with contextlib.suppress(OSError, ValueError):
                children = [int(c) for c in (task / "children").read_text().split()]
                out += children
                todo += children
    return out


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores of the machine spent busy so far (from /proc/stat), to spot other work running."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    v = [int(x) for x in fields]
    busy = sum(v[:8]) - v[3] - v[4]  # user nice system idle iowait irq softirq steal: all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Cores used over an interval by this process, one other process (the server) and everything else."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid
        self.t0 = time.perf_counter()
        self.own0, self.pid0, self.all0 = cpu_seconds(), cpu_seconds(pid) if pid else None, machine_busy_seconds()

    def read(self) -> dict[str, float | None]:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        own = (time.process_time() - (self.own0 or 0.0)) / dt
        srv = None
        if self.pid and self.pid0 is not None and (p1 := cpu_seconds(self.pid)) is not None:
            srv = (p1 - self.pid0) / dt
        total = None
        if self.all0 is not None and (a1 := machine_busy_seconds()) is not None:
            total = (a1 - self.all0) / dt
        other = None if total is None else max(total - own - (srv or 0.0), 0.0)
        return {"self_cpu_cores": own, "server_cpu_cores": srv, "machine_busy_cores": total,
                "other_cpu_cores": other}


# ----------------------------------------------------------------------------------------------- numbers, reports


def latency_summary(seconds: list[float]) -> dict[str, float | None]:
    """p50/p90/p95/p99/max/mean in milliseconds."""
    if not seconds:
        return dict.fromkeys(("p50", "p90", "p95", "p99", "max", "mean"))
    a = np.asarray(seconds) * 1000
    p50, p90, p95, p99 = np.percentile(a, [50, 90, 95, 99])
    return {"p50": float(p50), "p90": float(p90), "p95": float(p95), "p99": float(p99), "max": float(a.max()),
            "mean": float(a.mean())}


def distribution(values: list[float] | np.ndarray) -> dict[str, float | int | None]:
    """n, mean, p50, p90, max of a list of errors."""
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"n": 0, "mean": None, "p50": None, "p90": None, "max": None}
    return {"n": int(a.size), "mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)), "max": float(a.max())}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Date, CPU, cores, memory, versions and the accelerator of this run."""
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except ImportError:
        providers = []
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(), "cores": cores, "memory_gib": mem_gib,
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": {d: _version(d) for d in ("onnxruntime", "numpy", "opencv-python-headless", "pillow", "grpcio",
                                              "httpx", "litestar", "uvicorn", "dlib-bin", "facerec")},
        "onnxruntime_providers": providers,
        "gpu": "CUDA" if "CUDAExecutionProvider" in providers else None,
    }


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain-text table with right-aligned numbers."""
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1 else f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


class Progress:
    """A progress bar on stderr: tqdm when installed, else a small built-in one (throttled, one line)."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True) -> None:
        self.total, self.desc, self.n, self.enabled = total, desc, 0, enabled
        self._tqdm: Any = None
        self._t0 = time.perf_counter()
        self._tty = sys.stderr.isatty()
        self._last = 0.0 if self._tty else self._t0
        if enabled:
            try:
                from tqdm import tqdm  # optional; not a dependency

                self._tqdm = tqdm(total=total, desc=desc, unit="req", leave=False, file=sys.stderr)
            except ImportError:
                self._tqdm = None

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.update(n)
            if postfix:
                self._tqdm.set_postfix(postfix, refresh=False)
            return
        now = time.perf_counter()
        # On a terminal: one line redrawn 4 times a second; in a log: a plain line every 10 s.
        if now - self._last < (0.25 if self._tty else 10.0) and self.n < self.total:
            return
        if not self._tty and self.n >= self.total:
            return
        self._last = now
        frac = min(self.n / self.total, 1.0) if self.total else 0.0
        bar = "#" * int(frac * 24)
        rate = self.n / max(now - self._t0, 1e-9)
        extra = "".join(f" {k}={v}" for k, v in postfix.items())
        line = f"  {self.desc} [{bar:<24}] {self.n}/{self.total} {rate:.1f}/s{extra}"
        sys.stderr.write(f"\r{line}   " if self._tty else f"{line}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.close()
        elif self._tty:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()


def csv_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def csv_floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


@contextlib.contextmanager
def timed_section(name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    print(f"\n== {name}", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        print(f"== {name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
