"""Helpers of the overload, fault and shutdown tests: a gated/faulty proxy around the real backend, waiting, tokens.

The proxy only slows or breaks the backend on purpose; the app, the batchers, the HTTP and gRPC servers under test
are the real ones.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from server.auth import ALL_ROLES, LOCAL_ISSUER
from server.inference.backend import InferenceBackend, ModelSpec
from server.runtime import Runtime
from server.settings import PROJECT_ROOT

NDF = npt.NDArray[np.float32]
PAIR = ("obama_01_portrait_2012.jpg", "obama_02_congress_2009.jpg")


class ProxyBackend:
    """Forwards to a real backend; can hold every call at a gate, or fail the next calls.

    ``rows[model]`` counts the rows that reached the backend, so a test can prove dropped work never ran.
    ``aclose`` leaves the wrapped (session-shared) backend open.
    """

    def __init__(self, inner: InferenceBackend) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.gate.set()
        self.rows: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.fail_next = 0
        self.fail_with: Callable[[], BaseException] = lambda: RuntimeError("injected backend fault")

    @property
    def description(self) -> str:
        return f"proxy of {self.inner.description}"

    def spec(self, model: str) -> ModelSpec:
        return self.inner.spec(model)

    async def infer(self, model: str, inputs: dict[str, NDF]) -> dict[str, NDF]:
        self.rows[model] += len(next(iter(inputs.values())))
        self.calls[model] += 1
        await self.gate.wait()
        if self.fail_next > 0:
            self.fail_next -= 1
            raise self.fail_with()
        return await self.inner.infer(model, inputs)

    async def ready(self) -> bool:
        return await self.inner.ready()

    async def aclose(self) -> None:
        return None


async def wait_until(predicate: Callable[[], bool], within_s: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` (test-side only: the product never sleep-polls) until true or fail after ``within_s``."""
    end = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {within_s:.1f} s waiting for {what}")
        await asyncio.sleep(0.01)


def bearer(runtime: Runtime, company: str = "faultco", user: str = "alice") -> str:
    """``Bearer <token>`` from the runtime's local issuer with every role."""
    issuer = runtime.local_issuer
    assert issuer is not None
    s = runtime.settings
    token = issuer.mint(company, user, ALL_ROLES, 600, s.auth_audience, LOCAL_ISSUER,
                        company_claim=s.auth_company_claim, roles_claim=s.auth_roles_claim)
    return f"Bearer {token}"


# --------------------------------------------------------------------------- `facerec serve` as a child process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """``facerec serve`` on free loopback ports with its own data directory; ``start()`` waits for /health/live."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.port, self.grpc_port = free_port(), free_port()
        self.env = {**os.environ, "FACEREC_DATA_DIR": str(data_dir), "FACEREC_BACKEND": "onnxruntime",
                    "FACEREC_DEVICE": "cpu", "FACEREC_LOG_LEVEL": "INFO", **env}
        self.env.pop("FACEREC_DATABASE_URL", None)
        self.log_path = data_dir.parent / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 90.0) -> ServeProcess:
        cmd = [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--grpc-port", str(self.grpc_port)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"facerec serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health/live", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)  # a child's start-up has no event to wait on
        self.stop()
        raise AssertionError(f"facerec serve did not come up in {timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def token(self, company: str = "faultco") -> str:
        """A token minted by ``facerec token`` with the server's local issuer key."""
        out = subprocess.run([sys.executable, "-m", "server", "token", "--company", company],
                             env=self.env, capture_output=True, text=True, check=True, cwd=PROJECT_ROOT)
        return out.stdout.strip().splitlines()[-1]
