"""Locust user for facerec: POST /v1/compare_face with two photos, as fast as it can (no think time).

Headless, 16 users spawned at 4/s for 60 s against a local server::

    export FACEREC_TOKEN=$(.venv/bin/facerec token --company LOAD)
    .venv/bin/locust -f bench/locustfile.py --headless -u 16 -r 4 -t 60s --host http://127.0.0.1:8000

Environment: ``FACEREC_TOKEN`` (required), ``FACEREC_BENCH_FOLDER`` (all pairs of its face images; default
``../shared/faces``) or ``FACEREC_BENCH_PAIRS`` (CSV ``file1,file2[,same]``, paths relative to the CSV), and
``FACEREC_BENCH_CHANNEL`` (default ``OTHER``). Like ``bench.load``, it refuses a non-loopback ``--host``.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

from locust import HttpUser, events, task

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # locust imports this file by path

from bench.common import Pair, load_pairs, require_loopback


def _pairs() -> list[Pair]:
    folder = os.environ.get("FACEREC_BENCH_FOLDER")
    csv_path = os.environ.get("FACEREC_BENCH_PAIRS")
    pairs, _ = load_pairs(Path(folder) if folder else None, Path(csv_path) if csv_path else None)
    return pairs


PAIRS = _pairs()
_NEXT = itertools.count()


@events.test_start.add_listener
def _check_target(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    require_loopback(environment.host or "http://127.0.0.1:8000")
    if not os.environ.get("FACEREC_TOKEN"):
        raise SystemExit("error: set FACEREC_TOKEN (e.g. $(.venv/bin/facerec token --company LOAD))")


class CompareUser(HttpUser):
    """One client comparing pairs back to back."""

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {os.environ.get('FACEREC_TOKEN', '')}"
        self.channel = os.environ.get("FACEREC_BENCH_CHANNEL", "OTHER")

    @task
    def compare(self) -> None:
        i = next(_NEXT)
        p = PAIRS[i % len(PAIRS)]
        files = {"file1": (p.a.name, p.a.data, p.a.mime), "file2": (p.b.name, p.b.data, p.b.mime)}
        with self.client.post("/v1/compare_face", data={"channel": self.channel, "reference": f"locust-{i}"},
                              files=files, name="compare_face", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}")
