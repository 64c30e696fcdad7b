"""``facerec serve --workers N``: a supervisor binds the HTTP port once and runs N worker processes on it.

Each worker is a whole serving process (runtime, batchers, admission gate, its 1/N share of the cores for
inference) started with the *spawn* method (onnxruntime's thread pools do not survive fork). The workers accept
HTTP connections from the one socket the supervisor bound; gRPC cannot be handed a socket, so each worker binds the
gRPC port itself with SO_REUSEPORT, after the supervisor checked that nobody else holds it.

The supervisor owns a private run directory (``ready/``: each worker's readiness, ``metrics/``:
prometheus_client's multiprocess files) and removes it on exit. On SIGTERM/SIGINT it forwards SIGTERM to every
worker (a second signal forwards SIGINT: uvicorn's "force quit"), waits up to the grace period plus a margin and
exits 0 when every worker drained and exited 0. A worker that dies on its own is restarted when it had been ready
before (at most :data:`MAX_RESTARTS` in :data:`RESTART_WINDOW_S`); one that dies before it was ever ready (bad
configuration, a port it cannot bind, an unreachable database) stops the whole group with that worker's status.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from server.group import MULTIPROC_ENV, WorkerSlot, WorkerStatus
from server.settings import Settings

log = logging.getLogger("server.workers")

# A worker that keeps dying after it had served: this many restarts within the window end the group (exit 1).
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
# Beyond the grace period a worker gets to exit (its lifespan shutdown closes the store and the models) before
# it is killed.
EXIT_MARGIN_S = 10.0
# How often the supervisor looks at the workers' readiness files when nothing else wakes it (a death or a signal
# wakes it at once).
POLL_S = 1.0
# Exit status when the shared state cannot be prepared, as uvicorn exits when a single process's start-up fails.
STARTUP_FAILURE = 3


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_http(host: str, port: int) -> socket.socket:
    """The HTTP socket every worker accepts from (bound, not yet listening: the first worker up listens)."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's create_server does
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def check_port_free(host: str, port: int) -> None:
    """Raise OSError when ``host:port`` is taken: the workers' SO_REUSEPORT binds would otherwise share it
    silently with another server of the same user."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # old TIME_WAIT connections do not count
        probe.bind((host.strip("[]"), port))
        probe.listen(1)


def prepare_shared_state(settings: Settings) -> None:
    """What the workers share and must not race to create: the data directory, the local issuer's signing key
    (two workers each creating one would sign with different keys) and the store's schema (one migration run)."""
    import asyncio

    from server.auth import LocalIssuer
    from server.store import create_store

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.local_issuer:
        LocalIssuer.load_or_create(settings.data_dir)

    async def migrate() -> None:
        store = create_store(settings)
        try:
            await store.open()
        finally:
            await store.close()

    asyncio.run(migrate())


def worker_main(settings: Settings, slot: WorkerSlot, sock: socket.socket) -> None:
    """Entry point of a worker process (spawned): serve on ``sock`` until told to stop; exit with serve's status."""
    # A terminal's Ctrl-C goes to the foreground process group: in a group of its own the worker gets exactly
    # one signal, the supervisor's (a second one would make uvicorn skip the drain).
    os.setpgrp()
    from server.memory import limit_arenas

    limit_arenas()  # before any thread exists, like a single process
    _stop_with_parent()
    from server.serving import serve

    sys.exit(serve(settings, worker=slot, sockets=[sock]))


def _stop_with_parent() -> None:
    """SIGTERM this worker (a graceful drain) if the supervisor dies without stopping it (e.g. SIGKILL)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="facerec-parent-watch", daemon=True).start()


class Supervisor:
    """Runs ``count`` workers on ``sock`` and the gRPC port until a signal or a fatal worker death."""

    def __init__(self, settings: Settings, count: int, sock: socket.socket, run_dir: Path) -> None:
        self.settings = settings.replace(workers=count)
        self.count = count
        self.sock: socket.socket | None = sock
        self.run_dir = run_dir
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: dict[int, BaseProcess] = {}
        self.ever_ready = [False] * count
        self.restarts: collections.deque[float] = collections.deque()
        self.signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def slot(self, index: int) -> WorkerSlot:
        return WorkerSlot(index, self.count, self.run_dir)

    # ---- workers

    def spawn(self, index: int) -> None:
        assert self.sock is not None
        proc = self.ctx.Process(target=worker_main, args=(self.settings, self.slot(index), self.sock),
                                name=f"facerec-worker-{index}")
        proc.start()
        self.procs[index] = proc
        log.info("worker %d started (pid %s)", index, proc.pid)

    def _status(self, index: int) -> WorkerStatus | None:
        return WorkerStatus.read(self.slot(index).status_path(index))

    def note_ready(self) -> None:
        """Remember which workers have been ready at least once (a later death is then a crash, not bad config)."""
        for index, proc in self.procs.items():
            if not self.ever_ready[index]:
                status = self._status(index)
                if status is not None and status.pid == proc.pid and status.ready:
                    self.ever_ready[index] = True
                    log.info("worker %d (pid %s) ready", index, proc.pid)

    def forget(self, index: int, pid: int | None) -> None:
        """A dead worker: its readiness file goes (the group is not ready until it is back), and its live gauges."""
        with contextlib.suppress(FileNotFoundError):
            self.slot(index).status_path(index).unlink()
        if pid is not None:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(pid, str(self.slot(index).metrics_dir))  # type: ignore[no-untyped-call]

    def on_death(self, index: int, proc: BaseProcess) -> int | None:
        """Handle a worker that exited on its own: None when it was restarted, else the group's exit status."""
        self.note_ready()  # it may have become ready just before it died
        code = proc.exitcode
        self.forget(index, proc.pid)
        if not self.ever_ready[index]:
            log.error("worker %d (pid %s) exited with %s before it was ever ready; stopping", index, proc.pid, code)
            return code if code and code > 0 else 1
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW_S:
            self.restarts.popleft()
        if len(self.restarts) >= MAX_RESTARTS:
            log.error("worker %d (pid %s) exited with %s; %d restarts in %.0f s already, stopping", index,
                      proc.pid, code, len(self.restarts), RESTART_WINDOW_S)
            return 1
        self.restarts.append(now)
        log.error("worker %d (pid %s) exited with %s; restarting it", index, proc.pid, code)
        self.spawn(index)
        return None

    # ---- signals

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)
        if len(self.signals) > 1:  # while draining: pass it on at once
            self.forward(signal.SIGINT)

    def forward(self, signum: int) -> None:
        for proc in self.procs.values():
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_r, 512):
                pass

    # ---- main loop

    def run(self) -> int:
        """Start the workers and supervise them; the exit status."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            for index in range(self.count):
                self.spawn(index)
            from server.serving import announce

            announce(self.settings, self.count)
            failure = self._supervise()
            return self.stop(failure)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, handler in old.items():
                signal.signal(s, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _supervise(self) -> int | None:
        """Wait for a signal (None) or a fatal worker death (its exit status)."""
        while not self.signals:
            sentinels = [p.sentinel for p in self.procs.values()]
            multiprocessing.connection.wait([*sentinels, self._wake_r], timeout=POLL_S)
            self._drain_wakeups()
            if self.signals:
                break
            self.note_ready()
            for index, proc in list(self.procs.items()):
                if proc.exitcode is not None:
                    proc.join()
                    failure = self.on_death(index, proc)
                    if failure is not None:
                        return failure
        return None

    def stop(self, failure: int | None) -> int:
        """Drain every worker (SIGTERM), then kill what outlives the grace; the exit status."""
        log.info("stopping %d workers (grace %.0f s)", len(self.procs), self.settings.shutdown_grace_s)
        self.forward(signal.SIGTERM)
        if self.sock is not None:
            # No restarts from here on; once the workers closed theirs too, new connections are refused.
            self.sock.close()
            self.sock = None
        deadline = time.monotonic() + math.ceil(self.settings.shutdown_grace_s) + EXIT_MARGIN_S
        for proc in self.procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
        clean = True
        for index, proc in self.procs.items():
            if proc.exitcode is None:
                log.error("worker %d (pid %s) did not exit within the grace period; killing it", index, proc.pid)
                proc.kill()
                proc.join(5)
                clean = False
            elif proc.exitcode not in (0, -signal.SIGTERM):
                # -SIGTERM: stopped while still importing, before it served anything (nothing to drain).
                log.error("worker %d (pid %s) exited with %s", index, proc.pid, proc.exitcode)
                clean = False
        if failure is not None:
            return failure
        return 0 if clean else 1


def supervise(settings: Settings, count: int) -> int:
    """Serve with ``count`` worker processes until SIGTERM/SIGINT; the exit status (0 after a clean drain)."""
    from server.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    from server.errors import FacerecError

    try:
        prepare_shared_state(settings)
    except (FacerecError, OSError, ValueError) as exc:
        # As a single process whose start-up fails (uvicorn's lifespan failure status).
        detail = exc.detail if isinstance(exc, FacerecError) else str(exc)
        print(f"facerec: cannot start: {detail}", file=sys.stderr)
        return STARTUP_FAILURE
    try:
        sock = bind_http(settings.host, settings.port)
    except OSError as exc:
        print(f"facerec: cannot bind HTTP to {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        if settings.grpc_port > 0:
            try:
                check_port_free(settings.host, settings.grpc_port)
            except OSError as exc:
                print(f"facerec: cannot bind gRPC to {settings.host}:{settings.grpc_port}: {exc.strerror}",
                      file=sys.stderr)
                return 1
        run_dir = Path(tempfile.mkdtemp(prefix="facerec-workers-"))  # mode 0700: this user's only
        try:
            for sub in ("ready", "metrics"):
                (run_dir / sub).mkdir()
            # Read by prometheus_client when a worker imports it: the spawned workers inherit it.
            os.environ[MULTIPROC_ENV] = str(run_dir / "metrics")
            return Supervisor(settings, count, sock, run_dir).run()
        finally:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        sock.close()
