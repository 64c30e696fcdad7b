"""The one integration harness: a served runtime, its clients, tokens, compare helpers and a gate on the backend.

Every integration test gets its server from here: :func:`serve` starts a real :class:`~server.runtime.Runtime`
behind the real Litestar app (in-process ASGI client) and, when asked, the real grpc.aio server on a loopback
port; :func:`socket_server` puts an app on a real TCP socket (uvicorn) in this event loop; a ``facerec serve``
child process comes from :class:`tooling.serve.ServeProcess`. Nothing here is mocked: :class:`GatedBackend` only
holds, counts or fails calls to the real backend on purpose.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import select
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import numpy.typing as npt
import pytest
import uvicorn
from litestar import Litestar

from server.api.grpc import GrpcServer, start_grpc_server
from server.api.grpc.gen.facerec.v1 import face_recognition_pb2 as pb
from server.api.grpc.gen.facerec.v1 import face_recognition_pb2_grpc as pb_grpc
from server.api.grpc.status import GRPC_CODES
from server.app import create_app
from server.auth import ALL_ROLES, LOCAL_ISSUER
from server.inference.backend import InferenceBackend, ModelSpec
from server.inference.batcher import Batcher
from server.runtime import Runtime
from server.service import ScanService
from server.settings import PROJECT_ROOT, Settings
from server.store import ScanStore
from tooling.wait import wait_until

NDF = npt.NDArray[np.float32]
Metadata = tuple[tuple[str, str], ...]

COMPARE = "/v1/compare_face"
SCANS = "/v1/face-recognition"
PAIR = ("obama_01_portrait_2012.jpg", "obama_02_congress_2009.jpg")
# `facerec serve` children of the tests run on the CPU models whatever the caller's environment says.
LOCAL_CPU = {"FACEREC_BACKEND": "onnxruntime", "FACEREC_DEVICE": "cpu"}
# Bound of every wait on the served app: far above any expected wait (a compare is ~0.1-1 s here), so a 10x
# slower, loaded machine still passes and only a hang fails.
WAIT_S = 60.0


def base_settings(data_dir: Path, **changes: Any) -> Settings:
    """Settings of a served test runtime: CPU models of the checkout, SQLite in ``data_dir``, gRPC off."""
    # Batch size 16 explicitly: on CPU the default is 1, and these tests check that batches do form.
    return Settings(data_dir=data_dir, model_repository=PROJECT_ROOT / "model_repository", device="cpu",
                    max_batch_size=16, grpc_port=0, max_wait_ms=5.0).replace(**changes)


# --------------------------------------------------------------------------- the backend gate


class GatedBackend:
    """A real backend behind a gate: counts the rows and calls reaching each model, can hold every call until
    :meth:`release`, and can fail the next calls.

    ``aclose`` closes the wrapped backend only when the harness owns it (a Triton client made for this server),
    never a session-shared one.
    """

    def __init__(self, inner: InferenceBackend, *, owns: bool = False) -> None:
        self.inner = inner
        self.owns = owns
        self.rows: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.fail_next = 0
        self.fail_with: Callable[[], BaseException] = lambda: RuntimeError("injected backend fault")
        self._open = asyncio.Event()
        self._open.set()
        self._arrivals = asyncio.Condition()

    @property
    def description(self) -> str:
        return f"gated {self.inner.description}"

    def spec(self, model: str) -> ModelSpec:
        return self.inner.spec(model)

    def hold(self) -> None:
        """Hold every backend call from now on (calls already past the gate finish)."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def wait_rows(self, model: str, n: int, *, within_s: float = WAIT_S) -> None:
        """Until at least ``n`` rows have reached ``model`` (woken by each arriving call: no polling)."""
        async with asyncio.timeout(within_s), self._arrivals:
            await self._arrivals.wait_for(lambda: self.rows[model] >= n)

    async def infer(self, model: str, inputs: dict[str, NDF]) -> dict[str, NDF]:
        async with self._arrivals:
            self.rows[model] += len(next(iter(inputs.values())))
            self.calls[model] += 1
            self._arrivals.notify_all()
        await self._open.wait()
        if self.fail_next > 0:
            self.fail_next -= 1
            raise self.fail_with()
        return await self.inner.infer(model, inputs)

    async def ready(self) -> bool:
        return await self.inner.ready()

    async def aclose(self) -> None:
        if self.owns:
            await self.inner.aclose()


# --------------------------------------------------------------------------- the served runtime


@dataclass
class Harness:
    """A served runtime: its HTTP client (ASGI, in-process), gRPC stub (loopback) when started with gRPC, the gate
    in front of its backend when it has one, and tokens from its local issuer for any company and roles."""

    runtime: Runtime
    http: httpx.AsyncClient
    gate: GatedBackend | None = None
    grpc_server: GrpcServer | None = None
    channel: grpc.aio.Channel | None = None
    company: str = "acme"
    _stub: pb_grpc.FaceRecognitionStub | None = field(default=None, repr=False)

    # ----------------------------------------------------------------------- tokens

    def token(self, company: str | None = None, user: str = "alice", roles: Iterable[str] = ALL_ROLES) -> str:
        issuer = self.runtime.local_issuer
        assert issuer is not None, "the harness mints tokens with the runtime's local issuer"
        s = self.runtime.settings
        return issuer.mint(company or self.company, user, roles, 600, s.auth_audience, LOCAL_ISSUER,
                           company_claim=s.auth_company_claim, roles_claim=s.auth_roles_claim)

    def claims(self, **changes: Any) -> dict[str, Any]:
        """The claims a local-issuer token of company "acme" carries (every role, 10 minutes), with ``changes``
        applied (``None`` removes a claim): the raw material of forged and edge-case tokens."""
        now = int(time.time())
        claims: dict[str, Any] = {"iss": LOCAL_ISSUER, "aud": self.runtime.settings.auth_audience, "sub": "mallory",
                                  "company_id": "acme", "roles": list(ALL_ROLES), "iat": now, "nbf": now,
                                  "exp": now + 600}
        for key, value in changes.items():
            if value is None:
                claims.pop(key, None)
            else:
                claims[key] = value
        return claims

    def signed(self, headers: dict[str, Any] | None = None, **changes: Any) -> str:
        """A token the local issuer really signs, with :meth:`claims` changed and extra JOSE ``headers``."""
        import jwt

        issuer = self.runtime.local_issuer
        assert issuer is not None
        return jwt.encode(self.claims(**changes), issuer.private_key, algorithm="ES256",
                          headers={"kid": issuer.kid, **(headers or {})})

    def headers(self, company: str | None = None, user: str = "alice",
                roles: Iterable[str] = ALL_ROLES) -> dict[str, str]:
        """HTTP ``Authorization`` header."""
        return {"Authorization": f"Bearer {self.token(company, user, roles)}"}

    def metadata(self, company: str | None = None, user: str = "alice", roles: Iterable[str] = ALL_ROLES) -> Metadata:
        """gRPC ``authorization`` metadata."""
        return (("authorization", f"Bearer {self.token(company, user, roles)}"),)

    # ----------------------------------------------------------------------- compare (either transport)

    @property
    def stub(self) -> pb_grpc.FaceRecognitionStub:
        assert self._stub is not None, "this harness was started without gRPC (serve(..., with_grpc=True))"
        return self._stub

    async def http_compare(self, file1: bytes, file2: bytes, *, headers: dict[str, str] | None = None,
                           channel: str = "WEB", reference: str = "ref", name1: str = "a.jpg") -> httpx.Response:
        return await self.http.post(
            COMPARE, headers=self.headers() if headers is None else headers,
            data={"channel": channel, "reference": reference},
            files={"file1": (name1, file1, "image/jpeg"), "file2": ("b.jpg", file2, "image/jpeg")})

    def grpc_compare(self, file1: bytes, file2: bytes, *, metadata: Metadata | None = None, channel: str = "WEB",
                     reference: str = "ref", timeout: float | None = WAIT_S) -> Any:
        """The CompareFaces call: await it for the response, or cancel it (a client that leaves)."""
        req = pb.CompareFacesRequest(channel=channel, reference=reference, file1=file1, file2=file2)
        return self.stub.CompareFaces(req, metadata=self.metadata() if metadata is None else metadata,
                                      timeout=timeout)

    async def stored_scan(self, file1: bytes, file2: bytes, *, reference: str) -> dict[str, Any]:
        """The response of a compare that must succeed (the scan it stored)."""
        resp = await self.http_compare(file1, file2, reference=reference)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    async def count(self, company: str | None = None) -> int:
        """Scans the company has (from the list endpoint)."""
        r = await self.http.get(SCANS, params={"size": 1}, headers=self.headers(company))
        assert r.status_code == 200, r.text
        return int(r.json()["totalElements"])

    # ----------------------------------------------------------------------- the batchers

    def batcher(self, model: str) -> Batcher[Any, Any]:
        return self.runtime.runner.batchers[model]

    async def wait_queued(self, model: str, n: int, *, within_s: float = WAIT_S) -> None:
        """Until ``model``'s queue holds ``n`` rows (bounded poll: the batcher has no hook to await)."""
        await wait_until(lambda: self.batcher(model).queue_depth == n, within_s=within_s,
                         what=f"{n} rows queued at {model}")

    async def wait_settled(self, model: str, *, within_s: float = WAIT_S) -> None:
        """Until ``model``'s batcher has nothing queued and no batch running."""
        b = self.batcher(model)
        await wait_until(lambda: b.queue_depth == 0 and not b._inflight, within_s=within_s,
                         what=f"{model}'s batcher to settle")


@contextlib.asynccontextmanager
async def serve(settings: Settings, *, backend: InferenceBackend | None = None, owns_backend: bool = False,
                store: ScanStore | None = None, with_grpc: bool = False,
                company: str = "acme") -> AsyncIterator[Harness]:
    """A runtime on ``settings`` served until the block ends; ``backend`` (if given) sits behind a gate.

    Without ``backend`` the runtime starts the configured one itself (as ``facerec serve`` does).
    """
    gate = GatedBackend(backend, owns=owns_backend) if backend is not None else None
    runtime = await Runtime.start(settings, backend=gate, store=store)
    server: GrpcServer | None = None
    channel: grpc.aio.Channel | None = None
    transport = httpx.ASGITransport(app=create_app(runtime.settings, runtime))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://facerec.test", timeout=WAIT_S) as http:
            h = Harness(runtime, http, gate, company=company)
            if with_grpc:
                server = await start_grpc_server(runtime, ScanService(runtime), "127.0.0.1", 0)
                channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
                h.grpc_server, h.channel, h._stub = server, channel, pb_grpc.FaceRecognitionStub(channel)
            yield h
    finally:
        if gate is not None:
            gate.release()  # nothing may stay held past the test
        if channel is not None:
            await channel.close()
        if server is not None:
            await server.stop(0)
        await runtime.aclose()


@contextlib.asynccontextmanager
async def socket_server(app: Litestar, *, lifespan: str = "off") -> AsyncIterator[int]:
    """``app`` under uvicorn on a free loopback port, in this event loop; yields the port."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, server_header=False, log_config=None,
                                           lifespan=lifespan))
    serving = asyncio.ensure_future(server.serve())
    try:
        await wait_until(lambda: server.started or serving.done(), within_s=WAIT_S, what="uvicorn to start")
        assert server.started, "uvicorn did not start"
        yield int(server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, WAIT_S)


# --------------------------------------------------------------------------- asserting answers


def assert_problem(resp: httpx.Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    """``resp`` is the problem+json of ``status`` / ``code`` (and ``field``), with the request id."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.headers
    body: dict[str, Any] = resp.json()
    assert body["status"] == status and body["code"] == code, body
    assert body["type"].endswith(code) and body["title"]
    assert body["request_id"] == resp.headers["x-request-id"]
    if field is not None:
        assert body.get("field") == field, body
    return body


async def grpc_error(call: Any) -> grpc.aio.AioRpcError:
    """The error a gRPC call ends with (it must end with one, within the harness's bound)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(call, WAIT_S)
    return info.value


def trailers(err: grpc.aio.AioRpcError) -> dict[str, str]:
    return {k: v for k, v in (err.trailing_metadata() or ())}


def assert_grpc(err: grpc.aio.AioRpcError, status: int, code: str, field: str | None = None) -> None:
    """``err`` carries the status code mapped from HTTP ``status`` and the ``facerec-error-*`` trailers."""
    assert err.code() == GRPC_CODES[status], (err.code(), err.details())
    meta = trailers(err)
    assert meta.get("facerec-error-code") == code, meta
    if field is not None:
        assert meta.get("facerec-error-field") == field, meta


# --------------------------------------------------------------------------- hand-made requests


def multipart(parts: Iterable[tuple[str, bytes, str | None]], boundary: str) -> bytes:
    """A hand-made multipart body: (name, value, filename or None) per part, values as raw bytes."""
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def compare_parts(file1: bytes, file2: bytes, *, channel: bytes = b"WEB",
                  reference: bytes = b"ref") -> list[tuple[str, bytes, str | None]]:
    """The four parts of a compare form, for :func:`multipart`."""
    return [("channel", channel, None), ("reference", reference, None), ("file1", file1, "a.jpg"),
            ("file2", file2, "b.jpg")]


# --------------------------------------------------------------------------- raw HTTP/1.1 on a socket
# For what no HTTP client library will send or report: half-sent requests, hostile bytes, whole bodies written
# before reading, and whether the server closed the connection. Every blocking call is bounded by WAIT_S.


@dataclass
class Answer:
    """One HTTP/1.1 response read off a socket."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    closed: bool = False  # the server closed the connection after answering (only when asked to wait for it)


def raw_connect(port: int) -> socket.socket:
    """A blocking loopback connection whose reads and writes give up after WAIT_S."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    sock.settimeout(WAIT_S)
    return sock


def read_answer(sock: socket.socket, *, wait_close: bool = True) -> Answer:
    """One response (status, headers, a Content-Length body); with ``wait_close``, then whether the server ends
    the connection (:func:`closed_soon`), else the connection is left open for the next request."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a complete response: {buf[:200]!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed mid-body: {len(rest)} of {length} bytes")
        rest += chunk
    return Answer(int(lines[0].split()[1]), headers, rest[:length], closed=wait_close and closed_soon(sock))


def raw_request(port: int, request: bytes) -> Answer:
    """Send ``request`` as is on a new connection and read the answer (not waiting for the close)."""
    with contextlib.closing(raw_connect(port)) as sock:
        sock.sendall(request)
        return read_answer(sock, wait_close=False)


def closed_soon(sock: socket.socket) -> bool:
    """Whether the server ends the connection (EOF or reset) within WAIT_S, reading past anything it sends."""
    end = time.monotonic() + WAIT_S
    while time.monotonic() < end:
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def send_until_answered(sock: socket.socket, first: bytes, piece: bytes, limit: int) -> int:
    """Send ``first``, then ``piece`` repeatedly (at most ``limit`` bytes) until the server answers or closes.

    Returns the bytes sent after ``first``; the answer is left unread on the socket.
    """
    sock.sendall(first)
    sent = 0
    while sent < limit:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            break
        try:
            sock.sendall(piece)
        except (ConnectionResetError, BrokenPipeError):
            break
        sent += len(piece)
    return sent


# --------------------------------------------------------------------------- PostgreSQL


PG_HOST = "127.0.0.1:5432"
PG_USERS = ("postgres", "root")
_pg_probe: dict[str, str] = {}  # "dsn" or "reason", probed once per session


def postgres_dsn() -> str:
    """The asyncpg DSN of the test database (FACEREC_TEST_PG_URL, else the local server); skips the test with the
    reason when PostgreSQL does not answer. Probed once per session; callable from sync and async code alike."""
    if not _pg_probe:
        import asyncpg

        override = os.environ.get("FACEREC_TEST_PG_URL")
        candidates = [override] if override else [f"postgresql://{u}@{PG_HOST}/test" for u in PG_USERS]

        async def probe(dsn: str) -> None:
            conn = await asyncpg.connect(dsn, timeout=3)
            await conn.close()

        reasons = []
        for dsn in candidates:
            try:
                # A thread of its own: the caller may already be inside a running event loop.
                with ThreadPoolExecutor(1) as pool:
                    pool.submit(asyncio.run, probe(dsn)).result()
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                reasons.append(f"{dsn}: {exc!r}")
                continue
            _pg_probe["dsn"] = dsn
            break
        else:
            _pg_probe["reason"] = f"PostgreSQL unreachable ({'; '.join(reasons)})"
    if "dsn" not in _pg_probe:
        pytest.skip(_pg_probe["reason"])
    return _pg_probe["dsn"]


async def pg_exec(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_url(dsn: str) -> str:
    """The SQLAlchemy URL of an asyncpg DSN."""
    return "postgresql+asyncpg://" + dsn.split("://", 1)[1]


def new_schema(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"
