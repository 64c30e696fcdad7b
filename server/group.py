"""One worker of ``facerec serve --workers N``, as it sees its group: its slot, the readiness every worker publishes
to the group's run directory, and the metrics view over all workers (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar.types import Message, Scope
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from server.metrics import Metrics

log = logging.getLogger(__name__)

# Every response of a worker names it (HTTP header, gRPC initial metadata): which process served a request is the
# first question when one worker misbehaves. Only sent with --workers N > 1.
WORKER_HEADER = "x-facerec-worker"
# How often a worker writes its readiness, and when a silent worker counts as not ready. Ten publishing rounds:
# a worker whose event loop has not run for 10 s is not serving either, while a busy but live worker (its loop
# turns every few ms even under full load) never comes near it.
PUBLISH_S = 1.0
STALE_S = 10.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LocalReadiness = Callable[[], Awaitable[tuple[dict[str, bool], dict[str, str]]]]


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """Worker ``index`` of ``count``, sharing ``run_dir`` (the supervisor's private temporary directory)."""

    index: int
    count: int
    run_dir: Path

    @property
    def ready_dir(self) -> Path:
        return self.run_dir / "ready"

    @property
    def metrics_dir(self) -> Path:
        return self.run_dir / "metrics"

    def status_path(self, index: int) -> Path:
        """Where worker ``index`` publishes its readiness."""
        return self.ready_dir / f"worker-{index}.json"


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """What one worker last published: its pid, whether it was ready (and why not), and when (epoch seconds)."""

    index: int
    pid: int
    ready: bool
    reasons: dict[str, str]
    at: float

    @classmethod
    def read(cls, path: Path) -> WorkerStatus | None:
        """The status in ``path``; None when there is none (not started, or removed after the worker died)."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(int(raw["index"]), int(raw["pid"]), bool(raw["ready"]),
                       {str(k): str(v) for k, v in dict(raw.get("reasons", {})).items()}, float(raw["at"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, path: Path) -> None:
        """Replace ``path`` atomically (a reader sees the old or the new status, never half of one)."""
        body = json.dumps({"index": self.index, "pid": self.pid, "ready": self.ready, "reasons": self.reasons,
                           "at": self.at})
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(body)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


class WorkerGroup:
    """This worker's part of the group: publishes its own readiness every :data:`PUBLISH_S`, reads everyone's.

    The group is ready when every worker is: a worker with no status (not started yet, or dead: the supervisor
    removes a dead worker's file before restarting it), a stale one (silent for :data:`STALE_S`) or one that says
    it is not ready makes the whole group not ready, whichever worker is asked.
    """

    def __init__(self, slot: WorkerSlot, *, publish_s: float = PUBLISH_S, stale_s: float = STALE_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.slot = slot
        self.publish_s = publish_s
        self.stale_s = stale_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._pid = os.getpid()

    # ---- publishing (this worker)

    def publish(self, ready: bool, reasons: dict[str, str]) -> None:
        status = WorkerStatus(self.slot.index, self._pid, ready, reasons, self._clock())
        try:
            status.write(self.slot.status_path(self.slot.index))
        except OSError as exc:  # a full or vanished run directory: the others will see this worker go stale
            log.warning("worker %d cannot publish its readiness: %s", self.slot.index, exc)

    def start(self, local: LocalReadiness) -> None:
        """Publish ``local()`` now and every :attr:`publish_s` until :meth:`aclose`."""
        if self._task is None:
            self._task = asyncio.create_task(self._publish_forever(local), name="facerec-worker-readiness")

    async def _publish_forever(self, local: LocalReadiness) -> None:
        while True:
            try:
                components, reasons = await local()
                ready = all(components.values())
            except Exception:
                # The local check maps expected outages to False; anything else must not leave a stale "ready"
                # behind, nor end the loop (the worker would then go stale for good).
                log.exception("readiness check failed")
                ready, reasons = False, {"worker": "readiness check failed"}
            self.publish(ready, reasons)
            await asyncio.sleep(self.publish_s)

    async def aclose(self) -> None:
        """Stop publishing and say "not ready" (the worker is going away)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.publish(False, {"worker": "shutting down"})

    # ---- reading (everyone)

    def statuses(self) -> dict[int, WorkerStatus | None]:
        """Every worker's last published status (None where there is none)."""
        return {i: WorkerStatus.read(self.slot.status_path(i)) for i in range(self.slot.count)}

    def _judge(self, status: WorkerStatus | None, index: int) -> str | None:
        """Why worker ``index`` is not ready, or None when it is."""
        if status is None:
            return f"worker {index} not running (starting or restarting)"
        age = self._clock() - status.at
        if age > self.stale_s:
            return f"worker {index} silent for {age:.0f} s"
        if not status.ready:
            why = ", ".join(f"{k}: {v}" for k, v in sorted(status.reasons.items())) or "not ready"
            return f"worker {index} not ready ({why})"
        return None

    def report(self, own_ready: bool) -> tuple[bool, str | None, list[dict[str, Any]]]:
        """``(all ready, why not, one entry per worker)``; this worker counts with ``own_ready`` (its live check)."""
        problems: list[str] = []
        entries: list[dict[str, Any]] = []
        for index, status in self.statuses().items():
            pid: int | None
            if index == self.slot.index:
                ready, pid = own_ready, self._pid
                why = None if own_ready else f"worker {index} not ready"
            else:
                why = self._judge(status, index)
                ready, pid = why is None, (status.pid if status is not None else None)
            if why:
                problems.append(why)
            entries.append({"worker": index, "pid": pid, "ready": ready})
        return not problems, "; ".join(problems) or None, entries

    def live_pids(self) -> dict[int, int]:
        """``{worker index: pid}`` of the workers that published recently (this one included)."""
        pids = {self.slot.index: self._pid}
        now = self._clock()
        for index, status in self.statuses().items():
            if status is not None and index not in pids and now - status.at <= self.stale_s:
                pids[index] = status.pid
        return pids

    # ---- metrics

    def metrics(self) -> GroupMetrics:
        """This worker's metrics, exported as the view over the whole group."""
        return GroupMetrics(self.slot, self.live_pids)


class WorkerProcessCollector:
    """``process_*`` (CPU, memory, fds, start time) of every live worker, read from /proc with a ``worker`` label.

    prometheus_client's own process collector only sees the process it runs in, which in a group would be
    whichever worker answered the scrape.
    """

    def __init__(self, pids: Callable[[], dict[int, int]]) -> None:
        self._pids = pids

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for index, pid in sorted(self._pids().items()):
            collector = ProcessCollector(pid=lambda p=pid: p, registry=None)  # type: ignore[misc]
            for family in collector.collect():
                out = families.setdefault(family.name,
                                          Metric(family.name, family.documentation, family.type, family.unit))
                for s in family.samples:
                    out.add_sample(s.name, {**s.labels, "worker": str(index)}, s.value, s.timestamp)
        yield from families.values()


class GroupMetrics(Metrics):
    """One worker's metrics whose exposition (and :meth:`value`) covers every worker of the group.

    Counters and histograms are summed over all workers, dead ones included (so totals never go back); the
    in-flight and queue-depth gauges over the live ones; ``process_*`` come per worker (label ``worker``).
    Needs ``PROMETHEUS_MULTIPROC_DIR`` set to the slot's metrics directory before prometheus_client was imported
    (the supervisor sets it in the workers' environment).
    """

    def __init__(self, slot: WorkerSlot, pids: Callable[[], dict[int, int]]) -> None:
        env = os.environ.get(MULTIPROC_ENV)
        if values.ValueClass is values.MutexValue or env is None or Path(env) != slot.metrics_dir:
            raise RuntimeError(f"worker metrics need {MULTIPROC_ENV}={slot.metrics_dir} set before start-up")
        super().__init__()  # the metric objects; their values go to this process's files in the directory
        self.view = CollectorRegistry()
        MultiProcessCollector(self.view, path=str(slot.metrics_dir))  # type: ignore[no-untyped-call]
        self.view.register(self.build_info)  # identical in every worker, so this one's stands for all
        PlatformCollector(registry=self.view)
        self.view.register(WorkerProcessCollector(pids))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.view), CONTENT_TYPE_LATEST

    def value(self, name: str, **labels: str) -> float:
        v = self.view.get_sample_value(name, labels)
        return 0.0 if v is None else v


def worker_header(index: int) -> Callable[[Message, Scope], Awaitable[None]]:
    """A Litestar ``before_send`` hook naming the worker on every HTTP response."""
    value = str(index).encode()

    async def add_worker_header(message: Message, scope: Scope) -> None:
        if message["type"] == "http.response.start":
            headers: Iterable[tuple[bytes, bytes]] = message.get("headers", ())
            message["headers"] = [*headers, (WORKER_HEADER.encode(), value)]

    return add_worker_header
