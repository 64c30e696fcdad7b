"""The supervisor of ``facerec serve --workers N``: what it does when a worker dies, and its port checks."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.group import WorkerStatus
from server.settings import Settings
from server.workers import MAX_RESTARTS, Supervisor, bind_http, check_port_free


@dataclass
class DeadProcess:
    pid: int
    exitcode: int | None


@pytest.fixture
def supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Supervisor]:
    for sub in ("ready", "metrics"):
        (tmp_path / sub).mkdir()
    sock = socket.socket()
    sup = Supervisor(Settings(), 2, sock, tmp_path)
    spawned: list[int] = []

    def spawn(index: int) -> None:
        spawned.append(index)
        sup.procs[index] = DeadProcess(pid=10_000 + len(spawned), exitcode=None)  # type: ignore[assignment]

    monkeypatch.setattr(sup, "spawn", spawn)
    sup.spawned = spawned  # type: ignore[attr-defined]
    yield sup
    sock.close()


def publish(sup: Supervisor, index: int, pid: int, ready: bool) -> None:
    WorkerStatus(index, pid, ready, {}, 0.0).write(sup.slot(index).status_path(index))


def test_a_worker_dying_before_it_was_ever_ready_stops_the_group(supervisor: Supervisor) -> None:
    proc = DeadProcess(pid=123, exitcode=3)
    supervisor.procs[0] = proc  # type: ignore[assignment]
    publish(supervisor, 0, 123, ready=False)
    assert supervisor.on_death(0, proc) == 3  # type: ignore[arg-type]
    assert supervisor.spawned == []  # type: ignore[attr-defined]
    # killed by a signal before ready: still a failure, reported as 1
    proc = DeadProcess(pid=124, exitcode=-9)
    supervisor.procs[1] = proc  # type: ignore[assignment]
    assert supervisor.on_death(1, proc) == 1  # type: ignore[arg-type]


def test_a_worker_that_had_served_is_restarted_and_forgotten(supervisor: Supervisor) -> None:
    proc = DeadProcess(pid=123, exitcode=-9)
    supervisor.procs[1] = proc  # type: ignore[assignment]
    publish(supervisor, 1, 123, ready=True)  # its last word before it died: ready
    (supervisor.run_dir / "metrics" / "gauge_livesum_123.db").write_bytes(b"")
    (supervisor.run_dir / "metrics" / "counter_123.db").write_bytes(b"")
    assert supervisor.on_death(1, proc) is None  # type: ignore[arg-type]
    assert supervisor.spawned == [1]  # type: ignore[attr-defined]
    assert not supervisor.slot(1).status_path(1).exists()  # the group is not ready until the new one says so
    # its live gauges go (they described a process that is gone); its counters stay (totals never go back)
    assert sorted(p.name for p in (supervisor.run_dir / "metrics").iterdir()) == ["counter_123.db"]


def test_restarts_are_bounded(supervisor: Supervisor) -> None:
    supervisor.ever_ready[0] = True
    results = []
    for k in range(MAX_RESTARTS + 1):
        proc = DeadProcess(pid=200 + k, exitcode=1)
        supervisor.procs[0] = proc  # type: ignore[assignment]
        results.append(supervisor.on_death(0, proc))  # type: ignore[arg-type]
    assert results == [None] * MAX_RESTARTS + [1]


def test_ports_taken_are_reported(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        with pytest.raises(OSError):
            check_port_free("127.0.0.1", port)
        with pytest.raises(OSError):
            bind_http("127.0.0.1", port)
    finally:
        holder.close()
    check_port_free("127.0.0.1", port)  # free again
    sock = bind_http("127.0.0.1", port)
    try:
        assert sock.get_inheritable()
    finally:
        sock.close()
