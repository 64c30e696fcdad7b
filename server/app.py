"""The Litestar application factory; its lifespan owns the Runtime (and the gRPC server, when asked)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, Tag
from litestar.types import BeforeMessageSendHookHandler

from server.api.http import (
    EXCEPTION_HANDLERS,
    ROUTE_HANDLERS,
    RequestContextMiddleware,
    add_security_headers,
    provide_principal,
    provide_service,
)
from server.api.http.controllers import COMPARE_PATHS
from server.api.http.demo import demo_router
from server.api.http.docs import SCHEMA_PATH, OfflineSwaggerPlugin
from server.api.http.openapi import refine_openapi
from server.disconnect import CancelOnDisconnect
from server.errors import FacerecError
from server.memory import trim_forever
from server.runtime import Runtime
from server.service import ScanService
from server.settings import Settings
from server.store import ScanStore

if TYPE_CHECKING:
    from server.group import WorkerSlot

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 3600.0


async def purge_forever(store: ScanStore, days: int, interval_s: float = RETENTION_INTERVAL_S) -> None:
    """Delete scans older than ``days`` now and every ``interval_s``; a failed round waits for the next."""
    while True:
        cutoff = datetime.now(UTC) - timedelta(days=days)
        try:
            removed = await store.purge_older_than(cutoff)
        except FacerecError as exc:  # e.g. database unreachable: retention is not worth crashing the server
            log.warning("retention purge failed: %s", exc.detail)
        else:
            if removed:
                log.info("retention: purged %d scans created before %s", removed, cutoff.isoformat())
        await asyncio.sleep(interval_s)


Lifespan = Callable[[Litestar], contextlib.AbstractAsyncContextManager[None]]


def stop_grpc(app: Litestar) -> asyncio.Future[None] | None:
    """Begin stopping the app's gRPC server (once; later calls return the same future), None without one.

    ``facerec serve`` calls this as soon as SIGTERM arrives, so gRPC stops accepting calls and drains its
    in-flight ones while HTTP drains too; the lifespan's shutdown then awaits it.
    """
    stopping: asyncio.Future[None] | None = app.state.get("grpc_stopping")
    server = app.state.get("grpc_server")
    if stopping is None and server is not None:
        stopping = asyncio.ensure_future(server.stop(app.state.settings.shutdown_grace_s))
        app.state.grpc_stopping = stopping
    return stopping


def _lifespan(settings: Settings, runtime: Runtime | None, worker: WorkerSlot | None) -> Lifespan:
    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        rt = runtime or await Runtime.start(settings, worker=worker)
        service = ScanService(rt)
        app.state.runtime, app.state.service = rt, service
        grpc_server = None
        retention: asyncio.Task[None] | None = None
        trimmer = asyncio.create_task(trim_forever(), name="facerec-malloc-trim")
        try:
            if app.state.serve_grpc and settings.grpc_port > 0:
                # Imported here: gRPC is optional at run time and its generated code is heavy to import.
                from server.api.grpc.server import start_grpc_server

                # A worker of a group binds the shared gRPC port itself (SO_REUSEPORT; grpc.aio cannot serve a
                # socket bound elsewhere) and names itself in every response's initial metadata.
                grpc_server = await start_grpc_server(rt, service, settings.host, settings.grpc_port,
                                                      reuse_port=worker is not None, metadata=_worker_metadata(worker))
                app.state.grpc_server = grpc_server
            if settings.retention_days:
                retention = asyncio.create_task(purge_forever(rt.store, settings.retention_days),
                                                name="facerec-retention")
            yield
        finally:
            for task in (retention, trimmer):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            stopping = stop_grpc(app)
            if stopping is not None:
                await stopping
            if runtime is None:  # a runtime passed in belongs to the caller
                await rt.aclose()

    return lifespan


def _worker_metadata(worker: WorkerSlot | None) -> tuple[tuple[str, str], ...]:
    if worker is None:
        return ()
    from server.group import WORKER_HEADER

    return ((WORKER_HEADER, str(worker.index)),)


def _worker_hooks(worker: WorkerSlot | None) -> list[BeforeMessageSendHookHandler]:
    if worker is None:
        return []
    from server.group import worker_header

    return [worker_header(worker.index)]


def create_app(settings: Settings, runtime: Runtime | None = None, *, grpc: bool = False,
               worker: WorkerSlot | None = None) -> Litestar:
    """The HTTP app. Without ``runtime`` the lifespan starts and closes one; ``grpc`` also serves gRPC.

    A passed runtime is usable at once (even without running the lifespan, as with httpx's ASGITransport).
    ``worker``: the app runs in worker ``worker.index`` of ``facerec serve --workers N``.
    """
    state: dict[str, object] = {"settings": settings, "serve_grpc": grpc}
    if runtime is not None:
        state.update(runtime=runtime, service=ScanService(runtime))
    cors = None
    if settings.cors_origins:  # off unless origins are configured: browsers are not the expected clients
        cors = CORSConfig(allow_origins=list(settings.cors_origins),
                          allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                          expose_headers=["X-Request-ID", "Retry-After"])
    demo = demo_router(settings)  # /demo, when FACEREC_DEMO allows it
    app = Litestar(
        route_handlers=[*ROUTE_HANDLERS, *([demo] if demo is not None else [])],
        lifespan=[_lifespan(settings, runtime, worker)],
        dependencies={"principal": Provide(provide_principal),
                      "service": Provide(provide_service, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[CancelOnDisconnect(COMPARE_PATHS)],
        before_send=[add_security_headers, *_worker_hooks(worker)],
        request_max_body_size=settings.max_request_bytes,
        cors_config=cors,
        openapi_config=OpenAPIConfig(
            title="facerec", version="1.0.0", path=SCHEMA_PATH, render_plugins=[OfflineSwaggerPlugin()],
            description="Self-hosted face verification (seed-compatible API). Errors are RFC 9457 "
            "`application/problem+json` with a stable `code`; every response carries `X-Request-ID`.",
            components=Components(), tags=[
                Tag(name="compare", description="Compare the faces of two photos and store the scan"),
                Tag(name="scans", description="Read, update, list and delete the caller's company's scans"),
                Tag(name="operations", description="Health and metrics (no token; keep off the public ingress)"),
            ]),
        logging_config=None,  # the process (serving.py / the CLI) owns logging
        state=State(state),
        debug=False,
    )
    # The document is built once; what Litestar cannot infer (security, ranges, descriptions, headers) is added
    # to that cached document, which both /schema/openapi.json and the docs page serve.
    refine_openapi(app.plugins.get(OpenAPIPlugin).provide_openapi_schema(), auth_issuer=settings.auth_issuer)
    _log_every_request(app)
    return app


def _log_every_request(app: Litestar) -> None:
    """Put the request context (id, traceparent, access line, latency metric) around routing itself, so requests
    that match no route (404, 405) are logged and counted too: Litestar runs app-level middleware only for routed
    ones. It is the only place the context middleware is installed: one access line per request."""
    app.asgi_handler = RequestContextMiddleware()(app.asgi_handler)
