"""``facerec serve``: uvicorn running the app (and gRPC on the same loop) until SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn
from litestar import Litestar

from server import tracing
from server.api.http.protocol import HttpLimits, guarded_protocol
from server.app import create_app, stop_grpc
from server.logs import TEXT_FORMAT, configure_logging
from server.memory import limit_arenas, map_large_blocks
from server.settings import Settings
from server.topology import worker_count

if TYPE_CHECKING:
    from server.group import WorkerSlot

log = logging.getLogger(__name__)

LOG_FORMAT = TEXT_FORMAT


def token_hint(settings: Settings) -> str | None:
    """How to get a token, when this server trusts its own local issuer."""
    if not settings.local_issuer:
        return None
    return ("local token issuer active: mint a token with\n"
            "  .venv/bin/facerec token --company ACME\n"
            "and send it as 'Authorization: Bearer <token>'")


class _Server(uvicorn.Server):
    """uvicorn's server, except that a SIGTERM/SIGINT that led to a clean shutdown is not re-raised afterwards.

    uvicorn (>= 0.29) re-raises the captured signal once it has stopped, so the process would die with 143;
    for us the signal is the normal way to stop, and a completed graceful shutdown exits 0. Its shutdown also
    starts stopping gRPC at once, so both transports refuse new work and drain side by side.
    """

    def __init__(self, config: uvicorn.Config, app: Litestar) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn drains HTTP before the lifespan shutdown; gRPC must stop accepting now too, not after that.
        stop_grpc(self.app)
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                captured = getattr(self, "_captured_signals", None)
                if isinstance(captured, list):
                    captured.clear()


KEEP_ALIVE_S = 65


def hardened_uvicorn_options(settings: Settings) -> dict[str, object]:
    """uvicorn options that bound what a connection may cost before the app sees its request.

    The protocol enforces header size and count, the time to receive headers and body, and closes connections
    answered early with a lingering close (``server/api/http/protocol.py``); no WebSocket route exists, so
    upgrades are not offered.
    """
    return {"http": guarded_protocol(HttpLimits.from_settings(settings)), "ws": "none"}


def announce(settings: Settings, workers: int = 1) -> None:
    """Where the server listens (and how to get a token), on stdout."""
    hint = token_hint(settings)
    if hint:
        print(hint, flush=True)
    grpc_note = f", gRPC on {settings.host}:{settings.grpc_port}" if settings.grpc_port > 0 else ""
    workers_note = f", {workers} worker processes" if workers > 1 else ""
    print(f"facerec: HTTP on http://{settings.host}:{settings.port} "
          f"(docs at /schema, OpenAPI at /schema/openapi.json){grpc_note}{workers_note}",
          flush=True)


def serve(settings: Settings, *, worker: WorkerSlot | None = None,
          sockets: list[socket.socket] | None = None) -> int:
    """Serve until SIGINT/SIGTERM (in-flight requests get shutdown_grace_s to finish); the exit status.

    With more than one worker (FACEREC_WORKERS), this process becomes their supervisor (server/workers.py); each
    worker comes back here with its ``worker`` slot and the supervisor's HTTP socket in ``sockets``.
    """
    if worker is None and (count := worker_count(settings)) > 1:
        from server.workers import supervise

        return supervise(settings, count)
    limit_arenas()  # before the thread pools exist: arenas are created per thread
    map_large_blocks()  # decoded images go back to the OS when freed (the decode memory budget counts on it)
    configure_logging(settings.log_level, settings.log_format)
    try:
        tracing.configure(settings.tracing)
    except RuntimeError as exc:  # FACEREC_TRACING asks for OpenTelemetry, which is not installed
        print(f"facerec: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, grpc=True, worker=worker)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port,
        server_header=False,  # no banner revealing the server software
        date_header=True, log_config=None, lifespan="on", proxy_headers=False,
        access_log=False,  # the app's own access log (server.access) omits query strings, which may hold references
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
        # Longer than clients' and load balancers' idle timeouts (httpx 5 s, ALB 60 s): with uvicorn's 5 s default a
        # pooled connection could be closed just as a client reused it (one ReadError in a 10-minute soak).
        timeout_keep_alive=KEEP_ALIVE_S,
        **hardened_uvicorn_options(settings),  # type: ignore[arg-type]
    )
    server = _Server(config, app)
    if worker is None:  # a supervisor says it once for all its workers
        announce(settings)
    try:
        server.run(sockets=sockets)
    except SystemExit as exc:  # uvicorn exits 3 when the lifespan (models, store, gRPC port) fails to start
        return exc.code if isinstance(exc.code, int) else 1
    return 0 if server.started else 1
