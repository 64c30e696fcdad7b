"""``bench/gpu_check.sh --dry-run``: the GPU check's every step (models, raw batches, a 2-worker server under HTTP
and gRPC load, the summary) on CPU with tiny bounds, so the first session with a GPU only has to start it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from server.settings import PROJECT_ROOT

# The dry run takes ~60 s on a loaded 2-core machine; its own budget stops every step well before this.
LIMIT_S = 280


def test_dry_run_runs_every_step_and_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--out", str(out)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=LIMIT_S, check=False)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["device"] == "cpu"
    assert [s["batch_pairs"] for s in report["raw"]["steps"]] == [1, 2]
    assert all(s["pairs_per_s"] > 0 for s in report["raw"]["steps"])
    [served] = report["serve"]
    assert served["workers"] == 2 and "error" not in served
    assert served["ready"]["status"] == "ok" and len(served["ready"]["workers"]) == 2
    assert {s["protocol"] for s in served["steps"]} == {"http", "grpc"}
    for step in served["steps"]:
        assert step["ok"] > 0 and not step["errors"], step
    summary = (out / "gpu_summary.md").read_text()
    assert "## Raw pipeline" in summary and "## Served, 2 workers" in summary
    assert f"results: {out}/gpu_check.json" in proc.stdout + proc.stderr
    assert not report["notes"], report["notes"]
