"""GPU check: the raw pipeline per batch size, then `facerec serve` with N workers under HTTP and gRPC load.

    python -m bench.gpu_check --device cuda --out bench/results          # what bench/gpu_check.sh runs
    python -m bench.gpu_check --dry-run --out /tmp/gpu-dry                 # the same steps on CPU, tiny bounds
    python -m bench.gpu_check --device cpu --workers 1,2 --protocols http --concurrency 8 \\
        --pairs ../shared/lfw-dev/pairs.csv --raw-batch 0                  # e.g. 1 vs 2 workers on CPU

Steps, each bounded in requests and seconds, all inside ``--budget-s`` (a step that would not fit is skipped and
named in the notes), most informative first:
(1) ``bench.gpu_torch`` (``--torch``): the three models converted to PyTorch and timed on CUDA at batch 1..64, the
    raw model cost on a GPU even where onnxruntime has no CUDA provider (a dry run: on the CPU, when torch and
    onnx2torch are importable, else skipped);
(2) ``bench.raw`` at ``--raw-batch`` pairs per batch, here when ``--device cuda`` (the pipeline on the GPU);
(3) ``bench.host --workers`` (``--host-workers``), when that module exists and takes the option: host-path
    scaling with worker processes on this machine's cores;
(4) for each ``--workers`` count, a ``facerec serve`` child (free loopback ports, temporary data directory) driven
    by ``bench.load`` closed loops at each ``--concurrency`` over each protocol;
(5) ``bench.raw`` here instead when ``--device cpu`` (on a GPU machine the least telling step: last).
Writes ``gpu_check.json`` (everything) and ``gpu_summary.md`` under ``--out`` and prints their paths.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_FACES,
    DEFAULT_LFW_PAIRS,
    RESULTS,
    ROOT,
    csv_ints,
    load_pairs,
    machine_info,
    write_json,
)
from tooling.serve import ServeProcess

GPU_DATA = ROOT / "bench" / "gpu_data"  # pairs carried to a machine without ../shared (bench/gpu_prepare.sh)
DRY = {"raw_batch": [1, 2], "raw_requests": 2, "raw_duration": 5.0, "workers": ["2"], "concurrency": [2],
       "load_requests": 4, "load_duration": 5.0, "limit": 4}
# Seconds kept back from the budget at each decision: the summary and the stop of a server.
RESERVE_S = 15.0
# Pairs for bench.host (when it takes --lfw-pairs).
HOST_PAIRS = 400
# A server start: imports, model sessions (a CUDA context per worker), store; bounded separately.
START_S = 180.0


def default_pairs() -> tuple[Path | None, Path | None]:
    """(folder, pairs CSV) to use when none is given: LFW dev pairs, the shared photos, or the carried set."""
    if DEFAULT_LFW_PAIRS.is_file():
        return None, DEFAULT_LFW_PAIRS
    if DEFAULT_FACES.is_dir():
        return DEFAULT_FACES, None
    if (GPU_DATA / "pairs.csv").is_file():
        return None, GPU_DATA / "pairs.csv"
    raise SystemExit(f"error: no image pairs: neither {DEFAULT_LFW_PAIRS}, {DEFAULT_FACES} nor {GPU_DATA}/pairs.csv "
                     "(bench/gpu_prepare.sh makes the last one)")


def resolve_workers(spec: list[str], device: str) -> list[int]:
    """``["1", "auto", "8"]`` -> distinct counts in order; ``auto`` is what `facerec serve` picks on ``device``."""
    from server.settings import Settings
    from server.topology import auto_workers

    out: list[int] = []
    for item in spec:
        n = auto_workers(Settings(device=device)) if item == "auto" else int(item)  # type: ignore[arg-type]
        if n >= 1 and n not in out:
            out.append(n)
    return out


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic() - RESERVE_S


def run_raw(args: argparse.Namespace, budget: Budget, notes: list[str], env: dict[str, str]) -> dict[str, Any] | None:
    steps = len(args.raw_batch)
    need = steps * args.raw_duration + 60  # model load and warm-up on top of the steps
    if not steps:
        return None
    if budget.left() < need:
        notes.append(f"raw: skipped ({budget.left():.0f} s left, needs ~{need:.0f} s)")
        return None
    out = args.work / "raw.json"
    cmd = [sys.executable, "-m", "bench.raw", "--batch", ",".join(map(str, args.raw_batch)),
           "--requests", str(args.raw_requests), "--duration", str(args.raw_duration), "--out", str(out),
           "--no-progress", *pair_args(args)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=min(budget.left(), need + 120), capture_output=True,
                              text=True, check=False)
    except subprocess.TimeoutExpired:
        notes.append("raw: stopped at its time limit")
        return None
    log(proc.stderr[-2000:] + proc.stdout[-3000:])
    if proc.returncode != 0 or not out.is_file():
        notes.append(f"raw: failed with status {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
        return None
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def run_torch(args: argparse.Namespace, budget: Budget, notes: list[str], env: dict[str, str]
              ) -> dict[str, Any] | None:
    """``bench.gpu_torch`` in a child process (its CUDA context and memory end with it); None when off."""
    device = args.torch
    if device == "auto":
        device = "cpu" if args.dry_run else "cuda"
    if device == "off":
        return None
    seconds = min(args.torch_budget_s, budget.left() - 10)
    if seconds < 20:
        notes.append(f"torch models: skipped ({budget.left():.0f} s left)")
        return None
    out = args.work / "torch.json"
    cmd = [sys.executable, "-m", "bench.gpu_torch", "--device", device, "--out", str(out),
           "--budget-s", str(int(seconds - 10))]
    if args.dry_run:
        cmd += ["--batch", "1,2", "--precisions", "fp32", "--iters", "3", "--step-s", "0.2", "--warmup", "1",
                "--models", "landmarker,embedder"]
    else:
        # 56 timed steps (3 models, 2 detector sides, 7 batches, 2 precisions) inside ~80 s with the conversion and
        # validation: 0.3 s per step is still 30+ calls at the slowest (detector 640 at batch 64).
        cmd += ["--step-s", "0.3"]
    cmd += ["--pairs", str(args.pairs)] if args.pairs else ["--folder", str(args.folder)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=seconds + 30, capture_output=True, text=True,
                              check=False)
    except subprocess.TimeoutExpired:
        notes.append("torch models: stopped at its time limit")
        return None
    log(proc.stderr[-3000:] + proc.stdout[-3000:])
    if not out.is_file():
        notes.append(f"torch models: failed with status {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
        return None
    data: dict[str, Any] = json.loads(out.read_text())
    error = str(data.get("error", ""))
    if error and not (args.dry_run and error.startswith(("torch not importable", "onnx2torch not importable"))):
        # A dry run on a machine without torch is the expected case, not a finding.
        notes.append(f"torch models: {error}")
    return data


def host_command(help_text: str, workers: str, pairs: Path | None, out: Path) -> list[str] | None:
    """The ``bench.host`` arguments this version of it takes (its CLI may differ), or None without ``--workers``."""
    if "--workers" not in help_text:
        return None
    cmd = ["--workers", workers]
    if "--only" in help_text:
        cmd += ["--only", "lfw"]
    if pairs is not None and "--lfw " in help_text.replace("--lfw-", "--x-"):
        cmd += ["--lfw", str(pairs)]
    if "--lfw-pairs" in help_text:
        # Its pairs are shared out among the workers: 16 workers need more than its default 200 for a window of
        # more than a dozen pairs each, and recording (one row at a time, real models) grows with the count.
        cmd += ["--lfw-pairs", str(HOST_PAIRS)]
    if "--out" in help_text:
        cmd += ["--out", str(out)]
    return cmd


def run_host(args: argparse.Namespace, budget: Budget, notes: list[str], env: dict[str, str]
             ) -> dict[str, Any] | None:
    """``python -m bench.host --workers ...`` when the module exists and takes the option (else a note)."""
    if not args.host_workers:
        return None
    if not (ROOT / "bench" / "host.py").is_file():
        return {"skipped": "bench/host.py is not in this checkout"}
    seconds = min(args.host_budget_s, budget.left() - 10)
    if seconds < 30:
        notes.append(f"host bench: skipped ({budget.left():.0f} s left)")
        return None
    try:
        helptext = subprocess.run([sys.executable, "-m", "bench.host", "--help"], cwd=ROOT, env=env, timeout=60,
                                  capture_output=True, text=True, check=False).stdout
    except subprocess.TimeoutExpired:
        helptext = ""
    out = args.work / "host.json"
    cmd = host_command(helptext, args.host_workers, args.pairs, out)
    if cmd is None:
        return {"skipped": "bench.host has no --workers option (or its --help failed)"}
    result: dict[str, Any] = {"command": ["python", "-m", "bench.host", *cmd]}
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.host", *cmd], cwd=ROOT, env=env, timeout=seconds,
                              capture_output=True, text=True, check=False)
        result["status"], text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        notes.append(f"host bench: stopped at its time limit ({seconds:.0f} s)")
        result["status"] = "timeout"
        text = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    result["output_tail"] = text[-4000:]
    log(text[-3000:])
    if out.is_file():
        with contextlib.suppress(ValueError):
            result["report"] = json.loads(out.read_text())
    if result["status"] not in (0, "timeout"):
        notes.append(f"host bench: exit status {result['status']}")
    return result


def pair_args(args: argparse.Namespace) -> list[str]:
    out = ["--pairs", str(args.pairs)] if args.pairs else ["--folder", str(args.folder)]
    return out + (["--limit", str(args.limit)] if args.limit else [])


def serve_and_load(args: argparse.Namespace, workers: int, budget: Budget, notes: list[str],
                   env: dict[str, str]) -> dict[str, Any] | None:
    from bench.load import run_steps

    levels = len(args.concurrency) * len(args.protocols)
    need = 40 + levels * (args.load_duration + 5)
    if budget.left() < need:
        notes.append(f"serve with {workers} workers: skipped ({budget.left():.0f} s left, needs ~{need:.0f} s)")
        return None
    server = ServeProcess(workers=workers, ready_path="/health/ready",
                          env={**env, "FACEREC_SHUTDOWN_GRACE_S": "5", "FACEREC_LOG_LEVEL": "WARNING"})
    result: dict[str, Any] = {"workers": workers, "steps": []}
    try:
        t0 = time.monotonic()
        server.start(timeout_s=min(START_S, max(budget.left(), 1.0)))
        result["start_s"] = round(time.monotonic() - t0, 1)
        token = server.token()
        pairs, _ = load_pairs(args.folder, args.pairs, None, args.limit)
        for proto in args.protocols:
            if budget.left() < len(args.concurrency) * (args.load_duration + 5):
                notes.append(f"serve with {workers} workers: {proto} skipped (budget)")
                continue
            result["steps"] += asyncio.run(run_steps(
                protocol=proto, url=server.url, grpc_target=server.grpc_target, token=token, pairs=pairs,
                concurrency=args.concurrency, rates=[], requests=args.load_requests, duration=args.load_duration,
                warmup=2, request_timeout=60.0, max_inflight=max(args.concurrency), show_progress=False,
                label=f"w{workers} ", server_pid=server.proc.pid if server.proc else None,
                # Connections, not calls, are spread over the workers: 2 per worker so each gets some.
                grpc_connections=2 * workers))
        result["ready"] = readiness(server)
    except RuntimeError as exc:  # the server did not start: its log says why
        notes.append(f"serve with {workers} workers: {str(exc).splitlines()[0]}")
        result["error"] = str(exc)[-3000:]
    finally:
        server.stop()
    return result


def readiness(server: ServeProcess) -> dict[str, Any] | None:
    import urllib.request

    with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(f"{server.url}/health/ready",
                                                                          timeout=10) as r:
        body: dict[str, Any] = json.loads(r.read())
        return body
    return None


def log(text: str) -> None:
    if text.strip():
        print(text.rstrip(), file=sys.stderr, flush=True)


def summary_markdown(report: dict[str, Any]) -> str:
    from bench.gpu_torch import summary_lines

    env, lines = report["environment"], []
    lines += ["# GPU check", "",
              f"- date {env['machine']['date']}, {env['machine']['cpu']}, {env['machine']['cores']} cores, "
              f"{env['machine']['memory_gib']} GiB",
              f"- device asked: **{report['device']}**; onnxruntime {env['machine']['versions'].get('onnxruntime')} "
              f"providers {', '.join(env['machine']['onnxruntime_providers'])}",
              f"- GPU: {env.get('nvidia_smi') or 'none seen (nvidia-smi absent)'}",
              f"- pairs: {report['pairs_source']}; dry run: {report['dry_run']}; "
              f"took {report['elapsed_s']:.0f} s", ""]
    if report.get("torch_models"):
        lines += summary_lines(report["torch_models"])
    raw = report.get("raw")
    if raw:
        lines += [f"## Raw pipeline ({raw.get('backend')})", "", "| batch (pairs) | pairs/s | batch p50 ms |",
                  "|---:|---:|---:|"]
        for s in raw["steps"]:
            p50 = fmt(s.get("batch_latency_ms", {}).get("p50"))
            lines.append(f"| {s['batch_pairs']} | {s['pairs_per_s']:.1f} | {p50} |")
        lines.append("")
    for serve in report["serve"]:
        lines += [f"## Served, {serve['workers']} workers" + (f" (start {serve['start_s']} s)" if 'start_s' in serve
                                                               else ""), ""]
        if serve.get("error"):
            lines += ["did not start:", "", "```", serve["error"][-1500:], "```", ""]
            continue
        lines += ["| protocol | concurrency | pairs/s | p50 ms | p99 ms | errors | server cores | "
                  "mean batch det/lmk/emb |", "|---|---:|---:|---:|---:|---|---:|---|"]
        for s in serve["steps"]:
            batches = "/".join(fmt((s.get("server") or {}).get(m, {}).get("mean_batch_size"))
                               for m in ("detector", "landmarker", "embedder"))
            lines.append(f"| {s['protocol']} | {s['concurrency']} | {s['pairs_per_s']:.1f} | "
                         f"{fmt(s['latency_ms']['p50'])} | {fmt(s['latency_ms']['p99'])} | "
                         f"{s['errors'] or '-'} | {fmt(s.get('server_cpu_cores'))} | {batches} |")
        lines.append("")
    host = report.get("host")
    if host:
        lines += ["## Host path, worker processes (bench.host)", ""]
        if host.get("skipped"):
            lines += [f"skipped: {host['skipped']}", ""]
        else:
            lines += [f"`{' '.join(host['command'])}` (status {host.get('status')})", "", "```",
                      *host.get("output_tail", "").strip().splitlines()[-30:], "```", ""]
    if report["notes"]:
        lines += ["## Notes", "", *[f"- {n}" for n in report["notes"]], ""]
    return "\n".join(lines)


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def nvidia_smi() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False)
        version = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    # One table cell holds "Driver Version: X   CUDA Version: Y".
    found = re.search(r"CUDA Version:\s*([0-9.]+)", version.stdout)
    cuda = found.group(1) if found else "?"
    return f"{out.stdout.strip()} (CUDA {cuda})" if out.returncode == 0 else None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", type=Path, default=RESULTS, help="where gpu_check.json and gpu_summary.md go")
    ap.add_argument("--dry-run", action="store_true", help="the same steps on CPU with tiny bounds (a test runs it)")
    ap.add_argument("--device", choices=("cuda", "cpu", "auto"), default="cuda")
    ap.add_argument("--budget-s", type=float, default=420.0, help="all steps together end within this")
    ap.add_argument("--raw-batch", type=csv_ints, default=[1, 2, 4, 8, 16, 32, 64],
                    help="pairs per raw batch (0: no raw step)")
    ap.add_argument("--raw-requests", type=int, default=256, help="at most this many pairs per raw step")
    ap.add_argument("--raw-duration", type=float, default=8.0, help="at most this many seconds per raw step")
    ap.add_argument("--workers", default="1,auto,8", help="worker counts to serve with (auto: facerec's own choice)")
    ap.add_argument("--protocols", default="http,grpc")
    ap.add_argument("--concurrency", type=csv_ints, default=[64, 256])
    ap.add_argument("--load-requests", type=int, default=3000, help="at most this many requests per load step")
    ap.add_argument("--load-duration", type=float, default=15.0, help="at most this many seconds per load step")
    ap.add_argument("--torch", choices=("auto", "cuda", "cpu", "off"), default="auto",
                    help="bench.gpu_torch on this device (auto: cuda, or cpu with tiny bounds in a dry run)")
    ap.add_argument("--torch-budget-s", type=float, default=90.0)
    ap.add_argument("--host-workers", default="1,2,4,8,16",
                    help="bench.host --workers, when bench/host.py exists ('': no host step)")
    ap.add_argument("--host-budget-s", type=float, default=120.0)
    ap.add_argument("--pairs", type=Path, help="CSV file1,file2[,same] (default: LFW dev pairs when present)")
    ap.add_argument("--folder", type=Path, help="all pairs of this folder's images instead")
    ap.add_argument("--limit", type=int, help="use at most this many pairs")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    if args.dry_run:
        args.device = "cpu"
        for key, value in DRY.items():
            setattr(args, key, value)
        args.budget_s = min(args.budget_s, 150.0)
        args.host_workers = ""
    args.raw_batch = [b for b in args.raw_batch if b > 0]
    args.protocols = [p for p in str(args.protocols).split(",") if p]
    if not args.pairs and not args.folder:
        args.folder, args.pairs = default_pairs()
    workers = resolve_workers(args.workers.split(",") if isinstance(args.workers, str) else args.workers,
                              args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.out / ".gpu_check_work"
    args.work.mkdir(exist_ok=True)
    budget = Budget(args.budget_s)
    env = {**os.environ, "FACEREC_DEVICE": args.device, "FACEREC_BACKEND": "onnxruntime"}
    env.pop("FACEREC_WORKERS", None)
    notes: list[str] = []
    report: dict[str, Any] = {"device": args.device, "dry_run": args.dry_run,
                              "pairs_source": str(args.pairs or args.folder),
                              "environment": {"machine": machine_info(), "nvidia_smi": nvidia_smi()},
                              "workers": workers, "notes": notes}
    log(f"gpu_check: device {args.device}, workers {workers}, budget {args.budget_s:.0f} s")
    json_path, md_path = args.out / "gpu_check.json", args.out / "gpu_summary.md"
    report.update(torch_models=None, raw=None, host=None, serve=[])

    def save() -> None:
        # After every step: a run stopped from outside (the device call's time limit) still leaves its results.
        report["elapsed_s"] = time.monotonic() - started
        write_json(json_path, report)
        md_path.write_text(summary_markdown(report))

    report["torch_models"] = run_torch(args, budget, notes, env)
    save()
    if args.device != "cpu":
        report["raw"] = run_raw(args, budget, notes, env)
        save()
    report["host"] = run_host(args, budget, notes, env)
    save()
    for n in workers:
        if (served := serve_and_load(args, n, budget, notes, env)) is not None:
            report["serve"].append(served)
        save()
    if args.device == "cpu":
        report["raw"] = run_raw(args, budget, notes, env)
    save()
    with contextlib.suppress(OSError):
        for f in args.work.iterdir():
            f.unlink()
        args.work.rmdir()
    print(md_path.read_text())
    print(f"results: {json_path} {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
