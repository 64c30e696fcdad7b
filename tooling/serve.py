"""`facerec serve` as a child process on free loopback ports, for the tests and the benchmarks alike."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """``facerec serve`` on free loopback ports with a data directory of its own (a temporary one by default).

    ``start()`` waits (bounded) until ``ready_path`` answers 200: ``/health/live`` once the process serves,
    ``/health/ready`` once its models and store are up too (with several workers: all of them). The store is always
    the data directory's SQLite file (``FACEREC_DATABASE_URL`` is not inherited); ``env`` adds or overrides
    ``FACEREC_*`` variables. ``workers``: worker processes (``facerec serve --workers``); 1 by default, so a test
    serves one process whatever the machine's core count would make of the automatic setting; None leaves it to
    ``FACEREC_WORKERS`` or that automatic setting (and passes no flag: use None for a checkout that predates
    ``--workers``). ``project_root`` is the checkout whose server runs (this one by default; a benchmark may compare
    another).
    """

    def __init__(self, data_dir: Path | None = None, *, env: Mapping[str, str] | None = None, grpc: bool = True,
                 ready_path: str = "/health/live", workers: int | None = 1,
                 project_root: Path = PROJECT_ROOT) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="facerec-serve-") if data_dir is None else None
        self.data_dir = data_dir if data_dir is not None else Path(self._tmp.name) / "data"  # type: ignore[union-attr]
        self.ready_path = ready_path
        self.project_root = project_root
        self.port, self.grpc_port = free_port(), (free_port() if grpc else 0)
        self.workers = workers
        self.env = {**os.environ, "FACEREC_DATA_DIR": str(self.data_dir), "FACEREC_LOG_LEVEL": "INFO", **(env or {})}
        self.env.pop("FACEREC_DATABASE_URL", None)
        self.log_path = self.data_dir.parent / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout_s: float = 180.0) -> ServeProcess:
        """Start the process and wait until it answers ``ready_path``; raise with its log when it cannot.

        Once per object: ``with ServeProcess(...)`` starts it itself (a second start would leave the first process
        running, unstopped, sharing the port)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("this ServeProcess is already running")
        cmd = [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--grpc-port", str(self.grpc_port)]
        if self.workers is not None:
            cmd += ["--workers", str(self.workers)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.project_root)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"facerec serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self._answers():
                return self
            time.sleep(0.1)  # a child's start-up has no event to wait on; poll its health endpoint
        self.stop()
        raise RuntimeError(f"facerec serve did not answer {self.ready_path} in {timeout_s:.0f} s:\n{self.log_tail()}")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}{self.ready_path}", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def token(self, company: str = "acme", user: str = "alice", ttl_s: int = 3600) -> str:
        """A token minted by ``facerec token`` with the server's local issuer key."""
        out = subprocess.run([sys.executable, "-m", "server", "token", "--company", company, "--user", user,
                              "--ttl", str(ttl_s)], env=self.env, capture_output=True, text=True, check=True,
                             cwd=self.project_root)
        return out.stdout.strip().splitlines()[-1]

    def stop(self) -> None:
        """SIGTERM (a graceful drain), then SIGKILL if it lingers; a temporary data directory is removed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
