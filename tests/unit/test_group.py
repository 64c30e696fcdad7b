"""A worker's view of its group: readiness files (missing, stale, not ready), live pids, the worker header."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from server.group import STALE_S, WORKER_HEADER, GroupMetrics, WorkerGroup, WorkerSlot, WorkerStatus, worker_header
from tooling.wait import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make_group(tmp_path: Path, index: int = 0, count: int = 3) -> tuple[WorkerGroup, Clock]:
    slot = WorkerSlot(index, count, tmp_path)
    slot.ready_dir.mkdir(parents=True, exist_ok=True)
    clock = Clock()
    return WorkerGroup(slot, clock=clock), clock


def peer(group: WorkerGroup, index: int, *, ready: bool, at: float, pid: int = 4242,
         reasons: dict[str, str] | None = None) -> None:
    WorkerStatus(index, pid, ready, reasons or {}, at).write(group.slot.status_path(index))


def test_ready_only_when_every_worker_is(tmp_path: Path) -> None:
    group, clock = make_group(tmp_path)
    ok, why, entries = group.report(True)
    assert not ok and why is not None
    assert "worker 1 not running" in why and "worker 2 not running" in why  # nothing published yet

    peer(group, 1, ready=True, at=clock.now, pid=11)
    peer(group, 2, ready=True, at=clock.now, pid=12)
    ok, why, entries = group.report(True)
    assert (ok, why) == (True, None)
    assert entries == [{"worker": 0, "pid": os.getpid(), "ready": True}, {"worker": 1, "pid": 11, "ready": True},
                       {"worker": 2, "pid": 12, "ready": True}]
    # This worker's own live check counts as much as the others' files.
    assert group.report(False)[0] is False


def test_a_worker_that_says_not_ready_or_goes_silent_is_not_ready(tmp_path: Path) -> None:
    group, clock = make_group(tmp_path)
    peer(group, 1, ready=False, at=clock.now, reasons={"models": "triton unreachable"})
    peer(group, 2, ready=True, at=clock.now - STALE_S - 1)
    ok, why, entries = group.report(True)
    assert not ok and why is not None
    assert "worker 1 not ready (models: triton unreachable)" in why
    assert "worker 2 silent" in why
    assert [e["ready"] for e in entries] == [True, False, False]
    clock.now -= 2  # worker 2's last word is recent again
    assert "worker 2" not in (group.report(True)[1] or "")


def test_live_pids_leave_out_silent_and_missing_workers(tmp_path: Path) -> None:
    group, clock = make_group(tmp_path)
    peer(group, 1, ready=False, at=clock.now, pid=11)
    peer(group, 2, ready=True, at=clock.now - STALE_S - 1, pid=12)
    assert group.live_pids() == {0: os.getpid(), 1: 11}


def test_a_torn_or_foreign_file_reads_as_missing(tmp_path: Path) -> None:
    group, _ = make_group(tmp_path)
    group.slot.status_path(1).write_text('{"index": 1, "pid": ')
    group.slot.status_path(2).write_text('["not", "a", "status"]')
    assert group.statuses() == {0: None, 1: None, 2: None}


async def test_publishes_until_closed_then_says_not_ready(tmp_path: Path) -> None:
    group, _ = make_group(tmp_path, index=1, count=2)
    group.publish_s = 0.01
    checks = asyncio.Event()

    async def local() -> tuple[dict[str, bool], dict[str, str]]:
        checks.set()
        return {"models": True, "store": True}, {}

    group.start(local)
    await wait_until(lambda: WorkerStatus.read(group.slot.status_path(1)) is not None, within_s=30,
                     what="the first status")
    status = WorkerStatus.read(group.slot.status_path(1))
    assert status is not None and checks.is_set()
    assert (status.index, status.pid, status.ready) == (1, os.getpid(), True)
    await group.aclose()
    status = WorkerStatus.read(group.slot.status_path(1))
    assert status is not None and not status.ready and status.reasons == {"worker": "shutting down"}
    assert not [p for p in group.slot.ready_dir.iterdir() if p.name.startswith(".")]  # no temporary files left


async def test_a_failing_check_publishes_not_ready(tmp_path: Path) -> None:
    group, _ = make_group(tmp_path, index=0, count=1)
    failed = asyncio.Event()

    async def local() -> tuple[dict[str, bool], dict[str, str]]:
        failed.set()
        raise RuntimeError("boom")

    group.start(local)
    await wait_until(lambda: WorkerStatus.read(group.slot.status_path(0)) is not None, within_s=30,
                     what="the first status")
    status = WorkerStatus.read(group.slot.status_path(0))
    assert failed.is_set() and status is not None
    assert (status.ready, status.reasons) == (False, {"worker": "readiness check failed"})
    await group.aclose()


async def test_worker_header_names_the_worker_on_responses_only() -> None:
    hook = worker_header(3)
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
    await hook(start, {})  # type: ignore[arg-type]
    assert (WORKER_HEADER.encode(), b"3") in start["headers"]
    body = {"type": "http.response.body", "body": b""}
    await hook(body, {})  # type: ignore[arg-type]
    assert "headers" not in body


def test_group_metrics_refuse_to_start_without_multiprocess_mode(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # prometheus_client picks its value store when first imported; this process imported it without the variable,
    # so group metrics would silently count this process alone: refused.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        GroupMetrics(WorkerSlot(0, 2, tmp_path), dict)
