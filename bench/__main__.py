"""The standard benchmark set (`make bench`): raw and host bounds, HTTP/gRPC sweeps, batching, peers, accuracy, etc.

    python -m bench                      # everything, about 10-15 minutes on a 2-core machine
    python -m bench --quick              # a smoke run with tiny bounds (about 2 minutes)
    python -m bench --only raw,http      # some parts; summary.json keeps the other parts' last numbers

Starts its own servers (``facerec serve`` on free loopback ports with a temporary data directory and SQLite
store), stops them whatever happens, and writes ``bench/results/*.json``, the PNG plots and ``summary.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import plots
from bench.common import (
    DEFAULT_FACES,
    DEFAULT_LFW_PAIRS,
    RESULTS,
    Pair,
    bench_server,
    csv_ints,
    load_pairs,
    machine_info,
    mint_token,
    table,
    timed_section,
    write_json,
)
from tooling.serve import ServeProcess

PARTS = ("raw", "host", "http", "grpc", "open", "nobatch", "peers", "accuracy", "attributes", "robust")


def profile_for(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        return {"raw_batches": [1, 4], "raw_inflight": [1], "raw_requests": 8, "raw_duration": 4.0,
                "http_c": [1, 4], "grpc_c": [1, 4], "requests": 12, "duration": 4.0, "open_s": 4.0,
                "peers_limit": 8, "peers_faces_limit": 4, "accuracy_limit": 40, "accuracy_labels": False,
                "attributes_limit": 3,
                "host_args": ["--lfw-pairs", "16", "--photo-pairs", "4", "--warmup", "2"],
                "robust_args": ["--lfw-pairs", "4", "--crops", "c0.8,forehead", "--sizes", "128",
                                "--angles", "0,90,135"]}
    return {"raw_batches": [1, 2, 4, 8, 16], "raw_inflight": [1, 2], "raw_requests": 96, "raw_duration": 10.0,
            "http_c": [1, 2, 4, 8, 16, 32], "grpc_c": [1, 8, 32], "requests": 300, "duration": 20.0,
            "open_s": 20.0, "peers_limit": 100, "peers_faces_limit": 20, "accuracy_limit": None,
            "accuracy_labels": True, "attributes_limit": None, "host_args": ["--breakdown"],
            "robust_args": ["--lfw-pairs", "50", "--sizes", "64,256,1024"]}


def sweep(server: ServeProcess, protocol: str, pairs: list[Pair], concurrency: list[int], p: dict[str, Any],
          *, rates: list[float] | None = None, label: str = "") -> list[dict[str, Any]]:
    from bench.load import run_steps

    token = mint_token(server.data_dir)
    return asyncio.run(run_steps(
        protocol=protocol, url=server.url, grpc_target=server.grpc_target, token=token, pairs=pairs,
        concurrency=concurrency, rates=rates or [], requests=p["requests"], duration=p["duration"] if not rates
        else p["open_s"], warmup=2, request_timeout=120.0, max_inflight=256, label=label,
        server_pid=server.proc.pid if server.proc else None))


def best(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    closed = [s for s in steps if s["mode"] == "closed"]
    return max(closed, key=lambda s: s["pairs_per_s"]) if closed else None


def load_json(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def build_summary(machine: dict[str, Any], previous: dict[str, Any], parts_run: set[str],
                  wall_s: float, out: Path = RESULTS) -> dict[str, Any]:
    """Key numbers from the result files of this run (and earlier runs for the parts not run now)."""
    raw = load_json(out / "raw.json")
    host = load_json(out / "host.json")
    http_on = load_json(out / "load_http.json")
    grpc_on = load_json(out / "load_grpc.json")
    http_off = load_json(out / "load_http_nobatch.json")
    peers = load_json(out / "peers.json")
    acc = load_json(out / "accuracy.json")
    attrs = load_json(out / "attributes.json")
    s: dict[str, Any] = {"machine": machine, "parts_run_now": sorted(parts_run), "wall_s": wall_s,
                         "gpu": machine.get("gpu") or "none: CPU only (onnxruntime CPUExecutionProvider)",
                         "load_average_end": list(os.getloadavg())}
    runs = {name: (d.get("machine") or {}).get("date") for name, d in (
        ("raw", raw), ("http", http_on), ("grpc", grpc_on), ("http_nobatch", http_off), ("peers", peers))
        if d}
    s["run_dates"] = runs
    s["warnings"] = []
    others = [x.get("other_cpu_cores") for d in (raw, http_on, grpc_on, http_off) if d for x in d["steps"]]
    others = [o for o in others if o is not None]
    if others:
        s["other_cpu_cores_mean"] = sum(others) / len(others)
        if s["other_cpu_cores_mean"] > 0.25:
            s["warnings"].append(f"other processes used {s['other_cpu_cores_mean']:.2f} of {machine['cores']} cores "
                                 "on average during the measured steps (up to "
                                 f"{max(others):.2f}): throughput and latency numbers are skewed low")
    if host:
        s["host"] = {name: {str(r["workers"]): {k: r.get(k) for k in (
            "cpu_ms_per_pair", "pairs_per_s_per_core", "pairs_per_s", "speedup_over_first", "other_cpu_cores")}
            for r in ds["runs"]} for name, ds in host.get("datasets", {}).items()}
        s["host_commit"] = host.get("commit")
        if host.get("misses"):
            s["warnings"].append(f"bench.host: {host['misses']} replay misses (its numbers are not valid)")
    if len(set(runs.values())) > 1:
        s["warnings"].append("ratios combine result files from different runs: " + ", ".join(
            f"{k} {v}" for k, v in runs.items()))
    raw_best = raw["best"]["pairs_per_s"] if raw else None
    if raw:
        s["raw"] = {"best": raw["best"], "per_batch": {str(x["batch_pairs"]) + (f"x{x['inflight']}" if
                                                                              x["inflight"] > 1 else ""):
                                                       x["pairs_per_s"] for x in raw["steps"]},
                    "limits": raw["limits"], "backend": raw["backend"]}
    for key, data in (("http", http_on), ("grpc", grpc_on), ("http_nobatch", http_off)):
        if not data:
            continue
        b = best(data["steps"])
        s[key] = {"saturation_pairs_per_s": b["pairs_per_s"] if b else None,
                  "at_concurrency": b["concurrency"] if b else None,
                  "per_concurrency": {str(x["concurrency"]): {"pairs_per_s": x["pairs_per_s"],
                                                              "p50_ms": x["latency_ms"]["p50"],
                                                              "p99_ms": x["latency_ms"]["p99"],
                                                              "errors": x["errors"],
                                                              "detector_batch": ((x.get("server") or {}).get(
                                                                  "detector") or {}).get("mean_batch_size"),
                                                              "server_cpu_cores": x.get("server_cpu_cores"),
                                                              "other_cpu_cores": x.get("other_cpu_cores"),
                                                              "client_cpu_cores": x.get("client_cpu_cores")}
                                      for x in data["steps"] if x["mode"] == "closed"},
                  "open_loop": [{"rate": x["rate"], "pairs_per_s": x["pairs_per_s"], "p50_ms": x["latency_ms"]["p50"],
                                 "p99_ms": x["latency_ms"]["p99"], "errors": x["errors"]}
                                for x in data["steps"] if x["mode"] == "open"]}
        if b and raw_best:
            s[key]["server_over_raw"] = b["pairs_per_s"] / raw_best
        if b and b.get("server"):
            s[key]["at_saturation"] = {
                "server_cpu_cores": b.get("server_cpu_cores"), "client_cpu_cores": b.get("client_cpu_cores"),
                **{m: {k: b["server"][m].get(k) for k in ("mean_batch_size", "mean_queue_ms", "mean_inference_ms",
                                                          "busy_share")}
                   for m in ("detector", "landmarker", "embedder")}}
    if http_on and http_off:
        on = {x["concurrency"]: x for x in http_on["steps"] if x["mode"] == "closed"}
        off = {x["concurrency"]: x for x in http_off["steps"] if x["mode"] == "closed"}
        s["batching"] = {
            "ratio_on_over_off": {str(c): on[c]["pairs_per_s"] / max(off[c]["pairs_per_s"], 1e-9)
                                  for c in sorted(set(on) & set(off))},
            "mean_detector_batch_on": {str(c): ((on[c].get("server") or {}).get("detector") or {}).get(
                "mean_batch_size") for c in sorted(on)},
        }
        if 1 in on and 1 in off:
            s["batching"]["c1_p50_ms"] = {"on": on[1]["latency_ms"]["p50"], "off": off[1]["latency_ms"]["p50"]}
        hb, ob = best(http_on["steps"]), best(http_off["steps"])
        if hb and ob:
            s["batching"]["saturation_ratio"] = hb["pairs_per_s"] / max(ob["pairs_per_s"], 1e-9)
    if peers:
        if "skipped" in peers:
            s["peers"] = {"skipped": peers["skipped"]}
        else:
            s["peers"] = {"pairs": peers["pairs"], "source": peers.get("pairs_source"),
                          "facerec_pairs_per_s": peers["facerec"]["pairs_per_s"],
                          "dlib_pairs_per_s": peers["dlib"]["pairs_per_s"], "dlib_workers": peers["dlib"]["workers"],
                          "ratio_pairs_per_s": peers["ratio_pairs_per_s"],
                          "facerec_accuracy": (peers["facerec"].get("accuracy") or {}).get("accuracy"),
                          "dlib_accuracy": (peers["dlib"].get("accuracy") or {}).get("accuracy"),
                          "facerec_auc": (peers["facerec"].get("accuracy") or {}).get("auc"),
                          "dlib_auc": (peers["dlib"].get("accuracy") or {}).get("auc"),
                          "dlib_no_face": (peers["dlib"].get("accuracy") or {}).get("failures_no_face"),
                          "facerec_no_face": (peers["facerec"].get("accuracy") or {}).get("failures_no_face")}
            if "opencv" in peers:  # the bare OpenCV YuNet+SFace loop (throughput target: facerec >= 2x it)
                s["peers"].update({"opencv_pairs_per_s": peers["opencv"]["pairs_per_s"],
                                   "ratio_pairs_per_s_opencv": peers["ratio_pairs_per_s_opencv"],
                                   "opencv_accuracy": (peers["opencv"].get("accuracy") or {}).get("accuracy"),
                                   "opencv_auc": (peers["opencv"].get("accuracy") or {}).get("auc")})
    peers_faces = load_json(out / "peers_faces.json")
    if peers_faces and "skipped" not in peers_faces:
        s["peers_faces"] = {"pairs": peers_faces["pairs"], "source": peers_faces.get("pairs_source"),
                            "facerec_pairs_per_s": peers_faces["facerec"]["pairs_per_s"],
                            "dlib_pairs_per_s": peers_faces["dlib"]["pairs_per_s"],
                            "ratio_pairs_per_s": peers_faces["ratio_pairs_per_s"]}
    if acc:
        s["accuracy"] = {k: acc.get(k) for k in ("pairs", "threshold", "threshold_cosine", "accuracy_at_threshold",
                                                 "false_accepts", "false_rejects", "failures_no_face", "auc", "eer",
                                                 "tar_at_far_0.01", "best_threshold_cosine", "best_accuracy",
                                                 "images_per_s")}
        if isinstance(acc.get("all_pairs"), dict):
            s["accuracy"]["all_pairs"] = {k: acc["all_pairs"].get(k) for k in (
                "genuine", "impostor", "far_at_threshold", "frr_at_threshold", "tar_at_far_0.001")}
    if attrs:
        sm = attrs["summary"]
        s["attributes"] = {
            "images": sm["images"], "no_face": sm["no_face"],
            "roll_error_deg_rot15_mean": sm["roll_error_deg_rot15"]["mean"],
            "roll_error_deg_rot30_mean": sm["roll_error_deg_rot30"]["mean"],
            "roll_error_deg_rot30_max": sm["roll_error_deg_rot30"]["max"],
            "flip_yaw_error_deg_mean": sm["flip_yaw_error_deg"]["mean"],
            "flip_roll_error_deg_mean": sm["flip_roll_error_deg"]["mean"],
            "luminance_ratio_half_mean": sm["luminance_ratio_half"]["mean"],
            "occlusion_rise_mean": sm["occlusion_rise_cover"]["mean"],
            "occlusion_fraction_rising": sm["occlusion_rise_cover"]["fraction_rising"],
            "quality_drop_mean": sm["quality_drop_blur"]["mean"],
            "quality_fraction_dropping": sm["quality_drop_blur"]["fraction_dropping"],
            "dlib_nme_mean": sm["dlib_landmarks"]["nme"]["mean"],
            "dlib_nme_no_jaw_mean": sm["dlib_landmarks"]["nme_no_jaw"]["mean"],
        }
    return {**previous, **s}


def summary_text(s: dict[str, Any]) -> str:
    m = s["machine"]
    lines = [f"facerec bench  {m['date']}  {m['cpu']}  {m['cores']} cores  python {m['python']}  "
             f"onnxruntime {m['versions'].get('onnxruntime')}  GPU: {s.get('gpu')}"
             + (f"  load average at start {m['load_average_start'][0]:.1f}" if m.get("load_average_start") else "")]
    rows: list[list[Any]] = []
    if "raw" in s:
        rows.append(["raw pipeline, best batch", f"{s['raw']['best']['pairs_per_s']:.2f} pairs/s",
                     f"batch {s['raw']['best']['batch_pairs']} pairs, {s['raw']['best']['inflight']} in flight"])
    for name, by_workers in (s.get("host") or {}).items():
        rows.append([f"host bound ({name}), CPU per pair", " / ".join(
            f"{w}w {r['cpu_ms_per_pair']:.1f} ms" for w, r in by_workers.items()),
            " / ".join(f"{w}w {r['pairs_per_s_per_core']:.0f} pairs/s/core, {r['pairs_per_s']:.1f} pairs/s"
                       for w, r in by_workers.items())])
    for key, label in (("http", "server HTTP saturation"), ("grpc", "server gRPC saturation"),
                       ("http_nobatch", "server HTTP, batching off")):
        if key in s and s[key].get("saturation_pairs_per_s"):
            ratio = s[key].get("server_over_raw")
            rows.append([label, f"{s[key]['saturation_pairs_per_s']:.2f} pairs/s",
                         f"c={s[key]['at_concurrency']}" + (f", server/raw {ratio:.2f} (goal >= 0.85)"
                                                            if ratio else "")])
    if "batching" in s:
        b = s["batching"]
        rows.append(["batching on/off, per concurrency",
                     " ".join(f"c{c}:{r:.2f}" for c, r in b["ratio_on_over_off"].items()),
                     f"saturation {b.get('saturation_ratio', 0):.2f}x"])
        if "c1_p50_ms" in b:
            rows.append(["latency at c=1 (p50)", f"on {b['c1_p50_ms']['on']:.0f} ms",
                         f"off {b['c1_p50_ms']['off']:.0f} ms"])
    if "peers" in s:
        p = s["peers"]
        if "skipped" in p:
            rows.append(["face_recognition (dlib) peer", "skipped", p["skipped"]])
        else:
            rows.append(["facerec vs face_recognition (dlib)", f"{p['ratio_pairs_per_s']:.2f}x pairs/s",
                         f"{p['facerec_pairs_per_s']:.2f} vs {p['dlib_pairs_per_s']:.2f} pairs/s "
                         f"({p['dlib_workers']} dlib procs), {p['pairs']} pairs"])
            if "peers_faces" in s:
                q = s["peers_faces"]
                rows.append(["same, on the load-test photos", f"{q['ratio_pairs_per_s']:.2f}x pairs/s",
                             f"{q['facerec_pairs_per_s']:.2f} vs {q['dlib_pairs_per_s']:.2f} pairs/s, "
                             f"{q['pairs']} pairs"])
            if p.get("facerec_accuracy") is not None:
                rows.append(["accuracy on those pairs", f"facerec {p['facerec_accuracy']:.4f}",
                             f"dlib {p['dlib_accuracy']:.4f} (at 0.6)"])
    if "accuracy" in s:
        a = s["accuracy"]
        rows.append(["accuracy, lfw-dev pairs.csv", f"{a['accuracy_at_threshold']:.4f}",
                     f"{a['pairs']} pairs, FA {a['false_accepts']}, FR {a['false_rejects']}, AUC {a['auc']:.5f}, "
                     f"EER {a['eer']:.4f}"])
    if "attributes" in s:
        a = s["attributes"]
        rows.append(["attributes: roll error +-15/+-30", f"{a['roll_error_deg_rot15_mean']:.2f} / "
                     f"{a['roll_error_deg_rot30_mean']:.2f} deg mean", f"{a['images']} images"])
        rows.append(["attributes: flip yaw/roll error", f"{a['flip_yaw_error_deg_mean']:.2f} / "
                     f"{a['flip_roll_error_deg_mean']:.2f} deg mean",
                     f"luminance ratio at half {a['luminance_ratio_half_mean']:.3f}"])
        nme = a.get("dlib_nme_mean")
        rows.append(["landmarks vs dlib 68 (NME)", "-" if nme is None else f"{nme:.3f} x IOD",
                     "-" if a.get("dlib_nme_no_jaw_mean") is None else f"{a['dlib_nme_no_jaw_mean']:.3f} without jaw"])
    lines.append(table(rows, ["measure", "value", "detail"]))
    lines += [f"warning: {w}" for w in s.get("warnings", [])]
    if "raw" in s:
        lines.append("what limits throughput (raw profile):")
        lines += [f"  {x}" for x in s["raw"]["limits"]]
    sat = (s.get("http") or {}).get("at_saturation")
    if sat:
        cpu = sat.get("server_cpu_cores")
        lines.append(f"server at HTTP saturation (c={s['http']['at_concurrency']}): "
                     + (f"{cpu:.2f} cores busy; " if cpu is not None else "")
                     + "; ".join(f"{m} batch {sat[m]['mean_batch_size'] or 0:.1f}, "
                                 f"queue {sat[m]['mean_queue_ms'] or 0:.0f} ms, "
                                 f"worker busy {100 * (sat[m]['busy_share'] or 0):.0f} %"
                                 for m in ("detector", "landmarker", "embedder")))
    return "\n".join(lines)


def _f(v: Any, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(s: dict[str, Any]) -> str:
    """The results tables of bench/README.md, from a summary (written to results/summary.md)."""
    m = s["machine"]
    out = [f"Run {m['date']} on {m['cpu']}, {m['cores']} cores, {m.get('memory_gib')} GiB; Python {m['python']}, "
           f"onnxruntime {m['versions'].get('onnxruntime')} (CPUExecutionProvider), numpy "
           f"{m['versions'].get('numpy')}, OpenCV {m['versions'].get('opencv-python-headless')}, dlib "
           f"{m['versions'].get('dlib-bin')}. GPU: {s.get('gpu')}. Load average at start "
           f"{_f((m.get('load_average_start') or [None])[0], '.1f')}, at end "
           f"{_f((s.get('load_average_end') or [None])[0], '.1f')}.", ""]
    out += ["| measure | value |", "|---|---|"]
    if "raw" in s:
        b = s["raw"]["best"]
        out.append(f"| raw pipeline in-process, best | **{b['pairs_per_s']:.2f} pairs/s** (batch {b['batch_pairs']} "
                   f"pairs, {b['inflight']} in flight) |")
        out.append("| raw per batch size (pairs/s) | " + ", ".join(
            f"{k}: {v:.2f}" for k, v in s["raw"]["per_batch"].items()) + " |")
    for name, by_workers in (s.get("host") or {}).items():
        out.append(f"| host bound ({name}, inference replayed): CPU ms/pair, pairs/s per core, pairs/s | " + "; ".join(
            f"{w} worker{'s' if w != '1' else ''}: **{r['cpu_ms_per_pair']:.1f} ms**, {r['pairs_per_s_per_core']:.0f}, "
            f"{r['pairs_per_s']:.1f} (x{r['speedup_over_first']:.2f})" for w, r in by_workers.items()) + " |")
    for key, label in (("http", "server, HTTP"), ("grpc", "server, gRPC"),
                       ("http_nobatch", "server, HTTP, max batch 1")):
        if key in s and s[key].get("saturation_pairs_per_s"):
            x = s[key]
            out.append(f"| {label}: saturation | **{x['saturation_pairs_per_s']:.2f} pairs/s** "
                       f"at c={x['at_concurrency']}"
                       + (f"; server/raw **{x['server_over_raw']:.2f}**" if x.get("server_over_raw") else "") + " |")
    if "batching" in s:
        b = s["batching"]
        out.append(f"| batching on/off at saturation | **{_f(b.get('saturation_ratio'))}x** |")
        if "c1_p50_ms" in b:
            out.append(f"| p50 latency at c=1, batching on / off | {b['c1_p50_ms']['on']:.0f} ms / "
                       f"{b['c1_p50_ms']['off']:.0f} ms |")
    if "peers" in s and "skipped" not in s["peers"]:
        p = s["peers"]
        out.append(f"| facerec / face_recognition (dlib), LFW pairs | **{p['ratio_pairs_per_s']:.2f}x** "
                   f"({p['facerec_pairs_per_s']:.2f} vs {p['dlib_pairs_per_s']:.2f} pairs/s, {p['pairs']} pairs, "
                   f"dlib in {p['dlib_workers']} processes) |")
        if "peers_faces" in s:
            q = s["peers_faces"]
            out.append(f"| facerec / face_recognition (dlib), load-test photos | **{q['ratio_pairs_per_s']:.2f}x** "
                       f"({q['facerec_pairs_per_s']:.2f} vs {q['dlib_pairs_per_s']:.2f} pairs/s, {q['pairs']} pairs) |")
        if p.get("facerec_accuracy") is not None:
            out.append(f"| accuracy on those {p['pairs']} LFW pairs, facerec / dlib at 0.6 | "
                       f"{p['facerec_accuracy']:.4f} / {p['dlib_accuracy']:.4f} "
                       f"(AUC {_f(p.get('facerec_auc'), '.4f')} / {_f(p.get('dlib_auc'), '.4f')}; "
                       f"no face {p.get('facerec_no_face')} / {p.get('dlib_no_face')}) |")
    elif "peers" in s:
        out.append(f"| face_recognition (dlib) peer | skipped: {s['peers']['skipped']} |")
    if "accuracy" in s:
        a = s["accuracy"]
        out.append(f"| accuracy, lfw-dev pairs.csv ({a['pairs']} pairs) at threshold {a['threshold']} "
                   f"(cosine {_f(a.get('threshold_cosine'), '.3f')}) | **{a['accuracy_at_threshold']:.4f}** "
                   f"(FA {a['false_accepts']}, FR {a['false_rejects']}, no face {a['failures_no_face']}); AUC "
                   f"{a['auc']:.5f}, EER {a['eer']:.4f} |")
        ap_ = a.get("all_pairs")
        if ap_:
            out.append(f"| all pairs of the LFW dev images ({ap_['genuine']} genuine, {ap_['impostor']} impostor) | "
                       f"FAR {_f(ap_['far_at_threshold'], '.5f')}, FRR {_f(ap_['frr_at_threshold'], '.4f')}, "
                       f"TAR at FAR 0.1 % {_f(ap_.get('tar_at_far_0.001'), '.4f')} |")
    if "http" in s and "http_nobatch" in s:
        on, off = s["http"]["per_concurrency"], s["http_nobatch"]["per_concurrency"]
        out += ["", "| concurrency | batching on: pairs/s | p50 / p99 ms | detector batch | server / other CPU cores "
                "| batching off: pairs/s | p50 / p99 ms | server / other CPU | on/off |",
                "|---|---|---|---|---|---|---|---|---|"]
        for c in on:
            a, b = on[c], off.get(c)
            out.append(f"| {c} | {a['pairs_per_s']:.2f} | {_f(a['p50_ms'], '.0f')} / {_f(a['p99_ms'], '.0f')} | "
                       f"{_f(a.get('detector_batch'), '.1f')} | {_f(a.get('server_cpu_cores'), '.1f')} / "
                       f"{_f(a.get('other_cpu_cores'), '.1f')} | "
                       + (f"{b['pairs_per_s']:.2f} | {_f(b['p50_ms'], '.0f')} / {_f(b['p99_ms'], '.0f')} | "
                          f"{_f(b.get('server_cpu_cores'), '.1f')} / {_f(b.get('other_cpu_cores'), '.1f')} | "
                          f"{a['pairs_per_s'] / max(b['pairs_per_s'], 1e-9):.2f} |" if b else "- | - | - | - |"))
    if "grpc" in s:
        out += ["", "| gRPC concurrency | pairs/s | p50 / p99 ms |", "|---|---|---|"]
        out += [f"| {c} | {x['pairs_per_s']:.2f} | {_f(x['p50_ms'], '.0f')} / {_f(x['p99_ms'], '.0f')} |"
                for c, x in s["grpc"]["per_concurrency"].items()]
    if "http" in s and s["http"].get("open_loop"):
        out += ["", "| open loop, offered pairs/s | achieved | p50 / p99 ms |", "|---|---|---|"]
        out += [f"| {x['rate']:.2f} | {x['pairs_per_s']:.2f} | {_f(x['p50_ms'], '.0f')} / {_f(x['p99_ms'], '.0f')} |"
                for x in s["http"]["open_loop"]]
    if "attributes" in s:
        a = s["attributes"]
        out += ["", "| attribute check | mean error |", "|---|---|",
                f"| roll after rotation +-15 / +-30 deg | {_f(a['roll_error_deg_rot15_mean'])} / "
                f"{_f(a['roll_error_deg_rot30_mean'])} deg (max {_f(a['roll_error_deg_rot30_max'])}) |",
                f"| flip: yaw / roll sign symmetry | {_f(a['flip_yaw_error_deg_mean'])} / "
                f"{_f(a['flip_roll_error_deg_mean'])} deg |",
                f"| luminance ratio with pixels halved (ideal 0.5) | {_f(a['luminance_ratio_half_mean'], '.3f')} |",
                f"| occlusion rise, lower face covered | {_f(a['occlusion_rise_mean'], '.3f')} "
                f"(rises in {_f(100 * (a['occlusion_fraction_rising'] or 0), '.0f')} % of images) |",
                f"| quality drop, face blurred | {_f(a['quality_drop_mean'], '.3f')} "
                f"(drops in {_f(100 * (a['quality_fraction_dropping'] or 0), '.0f')} % of images) |",
                f"| landmarks vs dlib 68, NME (x outer inter-ocular) | {_f(a['dlib_nme_mean'], '.3f')} "
                f"({_f(a['dlib_nme_no_jaw_mean'], '.3f')} without the jaw) |"]
    if "raw" in s:
        out += ["", "Raw profile (where a pair's time goes in-process):", ""]
        out += [f"    {x}" for x in s["raw"]["limits"]]
    out += ["", *(f"> warning: {w}" for w in s.get("warnings", []))]
    return "\n".join(out).rstrip() + "\n"


def run_server_part(env: dict[str, str], body: Any) -> None:
    server = bench_server(env)
    try:
        server.start()
        body(server)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny bounds: a smoke run of every part")
    ap.add_argument("--only", help=f"comma-separated parts of {','.join(PARTS)}")
    ap.add_argument("--skip", default="", help="comma-separated parts to leave out")
    ap.add_argument("--concurrency", type=csv_ints, help="override the HTTP sweep levels")
    ap.add_argument("--folder", type=Path, default=DEFAULT_FACES, help="load/raw image pairs (all pairs)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="output folder (default bench/results)")
    ap.add_argument("--render", action="store_true",
                    help="measure nothing: redraw the plots and rewrite the summary from the result files")
    args = ap.parse_args(argv)
    out: Path = args.results
    parts = set(args.only.split(",")) if args.only else set(PARTS)
    parts -= set(args.skip.split(","))
    if args.render:
        parts = set()
    unknown = parts - set(PARTS)
    if unknown:
        ap.error(f"unknown parts: {', '.join(sorted(unknown))}")
    p = profile_for(args)
    if args.concurrency:
        p["http_c"] = args.concurrency
    t0 = time.perf_counter()
    machine = machine_info()
    machine["load_average_start"] = list(os.getloadavg())  # other work on the machine skews every number
    out.mkdir(parents=True, exist_ok=True)
    pairs, source = load_pairs(args.folder, None)
    print(f"facerec bench: {machine['cpu']}, {machine['cores']} cores; {len(pairs)} pairs from {source}; "
          f"parts {', '.join(x for x in PARTS if x in parts)}", file=sys.stderr)

    if "raw" in parts:
        with timed_section("raw in-process pipeline"):
            from bench import raw

            rep = asyncio.run(raw.run(pairs, p["raw_batches"], requests=p["raw_requests"],
                                      duration=p["raw_duration"], inflight=p["raw_inflight"]))
            write_json(out / "raw.json", {"machine": machine, "pairs_source": source, "pairs": len(pairs), **rep})
            print(raw.sweep_table(rep["steps"]))
            plots.raw_profile(rep, out / "raw_profile.png")

    if "host" in parts:
        with timed_section("host bound: the service path with inference replayed, 1 and 2 workers (bench.host)"):
            from bench import host

            if host.main([*p["host_args"], "--out", str(out / "host.json")]) != 0:
                print("warning: bench.host reported replay misses (see above)", file=sys.stderr)
            host_rep = load_json(out / "host.json")
            if host_rep:
                plots.host_workers(host_rep, out / "host_workers.png")

    common = {"server": {"max_batch_size": 16, "max_wait_ms": "default (5)"},
              "pairs_source": source, "pairs": len(pairs), "requests_per_step": p["requests"],
              "duration_per_step_s": p["duration"]}
    if parts & {"http", "grpc", "open"}:
        def batching_on(server: ServeProcess) -> None:
            http_steps: list[dict[str, Any]] = []
            if "http" in parts:
                with timed_section("HTTP closed-loop sweep, batching on"):
                    http_steps = sweep(server, "http", pairs, p["http_c"], p)
            if "open" in parts:
                sat = (best(http_steps) or {}).get("pairs_per_s")
                prev = load_json(out / "load_http.json") if sat is None else None
                if sat is None and prev:
                    sat = (best(prev["steps"]) or {}).get("pairs_per_s")
                rates = [round(f * sat, 2) for f in (0.5, 0.9)] if sat else [1.0]
                with timed_section(f"HTTP open loop (Poisson) at {rates} pairs/s"):
                    http_steps += sweep(server, "http", pairs, [], p, rates=rates)
            if http_steps:
                write_json(out / "load_http.json", {"machine": machine, **common, "steps": http_steps})
            if "grpc" in parts:
                with timed_section("gRPC closed-loop sweep, batching on"):
                    steps = sweep(server, "grpc", pairs, p["grpc_c"], p)
                write_json(out / "load_grpc.json", {"machine": machine, **common, "steps": steps})

        # Explicit: the CPU default is 1 (batching only pays on a GPU), and this run measures batching on.
        run_server_part({"FACEREC_MAX_BATCH_SIZE": "16"}, batching_on)

    if "nobatch" in parts:
        def batching_off(server: ServeProcess) -> None:
            with timed_section("HTTP closed-loop sweep, batching off (FACEREC_MAX_BATCH_SIZE=1)"):
                steps = sweep(server, "http", pairs, p["http_c"], p, label="no-batch ")
            write_json(out / "load_http_nobatch.json",
                       {"machine": machine, **common, "server": {"max_batch_size": 1}, "steps": steps})

        run_server_part({"FACEREC_MAX_BATCH_SIZE": "1"}, batching_off)

    if "peers" in parts:
        with timed_section("peer: face_recognition approach (dlib)"):
            from bench import peers

            why = peers.dlib_unavailable()
            if why:
                print(f"skipped: {why}", file=sys.stderr)
                write_json(out / "peers.json", {"skipped": why})
            else:
                lfw = load_pairs(None, DEFAULT_LFW_PAIRS, limit=p["peers_limit"])[0]
                raw_rep = load_json(out / "raw.json")
                batch = min(raw_rep["best"]["batch_pairs"], 16) if raw_rep else 8
                rep = peers.run(lfw, workers=machine["cores"], batch=batch)
                rep = {"machine": machine, "pairs_source": str(DEFAULT_LFW_PAIRS), **rep}
                write_json(out / "peers.json", rep)
                peers.plot_roc(rep, out / "peers_roc.png")
                print(peers.summary_table(rep))
                # Speed only, on the load test's own photos (up to 1280 px: HOG upsampling makes dlib pay more).
                big = pairs[: p["peers_faces_limit"]]
                rep = peers.run(big, workers=machine["cores"], batch=min(batch, len(big)))
                write_json(out / "peers_faces.json", {"machine": machine, "pairs_source": source, **rep})
                print(peers.summary_table(rep))

    if "robust" in parts:
        with timed_section("robustness: tight crops, rotations, no-face photos vs the OpenCV loop (bench.robust)"):
            from bench import robust

            robust.main([*p["robust_args"], "--out", str(out / "robust.json")])

    if "accuracy" in parts:
        with timed_section("accuracy on lfw-dev (bench.accuracy)"):
            from bench import accuracy

            acc_args = ["--pairs", str(DEFAULT_LFW_PAIRS), "--out", str(out / "accuracy.json")]
            if p["accuracy_labels"]:
                acc_args += ["--labels", str(DEFAULT_LFW_PAIRS.with_name("LABELS.csv"))]
            if p["accuracy_limit"]:
                acc_args += ["--limit", str(p["accuracy_limit"])]
            accuracy.main(acc_args)

    if "attributes" in parts:
        with timed_section("attribute consistency (bench.attributes)"):
            from bench import attributes

            rep = attributes.run(args.folder, p["attributes_limit"])
            write_json(out / "attributes.json", {"machine": machine, **rep})
            print(attributes.summary_table(rep["summary"]))

    series = {}
    for name, fname in (("HTTP, batching on", "load_http.json"), ("gRPC, batching on", "load_grpc.json"),
                        ("HTTP, batching off", "load_http_nobatch.json")):
        data = load_json(out / fname)
        if data:
            series[name] = data["steps"]
    raw_rep = load_json(out / "raw.json")
    plots.throughput(series, raw_rep["best"]["pairs_per_s"] if raw_rep else None, out / "throughput.png")
    plots.latency({k: v for k, v in series.items() if "HTTP" in k}, out / "latency.png")
    if "HTTP, batching on" in series and "HTTP, batching off" in series:
        plots.batching(series["HTTP, batching on"], series["HTTP, batching off"], out / "batching.png")

    previous = load_json(out / "summary.json") or {}
    if args.render and previous.get("machine"):
        # Re-rendering keeps the measuring run's identity (date, load, duration, which parts it ran).
        summary = build_summary(previous["machine"], previous, set(previous.get("parts_run_now", [])),
                                previous.get("wall_s", 0.0), out)
        summary["load_average_end"] = previous.get("load_average_end")
    else:
        summary = build_summary(machine, previous, parts, time.perf_counter() - t0, out)
        summary["quick"] = args.quick
    write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(markdown(summary))
    print()
    print(summary_text(summary))
    print(f"\nresults in {out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
