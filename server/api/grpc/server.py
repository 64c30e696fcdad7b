"""Starts the grpc.aio server: FaceRecognition servicer, health checking (fed by readiness), reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from server.api.grpc.preauth import MAX_PENDING_AUTH, AuthBeforeMessage
from server.api.grpc.servicer import SERVICE_NAME, FaceRecognitionServicer, add_servicer
from server.runtime import Runtime
from server.service import ScanService

log = logging.getLogger(__name__)

HEALTH_SERVICE_NAME = "grpc.health.v1.Health"
# Protobuf framing around the two images is a few bytes; with this, a request at the HTTP body limit is legal.
MESSAGE_HEADROOM = 64 * 1024
# Responses are JSON-sized (a page of scans, each with 2 x 68 landmarks): far below this.
MAX_SEND_BYTES = 32 * 1024 * 1024
HEALTH_REFRESH_S = 5.0


@dataclass(slots=True)
class GrpcServer:
    """A started gRPC server, its bound port and the task keeping its health status current.

    ``await stop(grace)`` marks health NOT_SERVING (so balancers drain first), stops the refresher and then
    the server, letting in-flight calls finish within ``grace`` seconds.
    """

    server: grpc.aio.Server
    port: int
    health: HealthServicer
    refresher: asyncio.Task[None]

    async def stop(self, grace: float | None = None) -> None:
        await self.health.enter_graceful_shutdown()
        self.refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.refresher
        await self.server.stop(grace)


async def refresh_health(runtime: Runtime, health: HealthServicer) -> None:
    """Set the overall and the service status from ``runtime.readiness()`` once."""
    try:
        ready = all((await runtime.readiness()).values())
    except Exception:
        # readiness() maps expected outages to False; anything else must not leave a stale SERVING behind
        # (nor kill the refresher loop), so it counts as not ready.
        log.exception("readiness check failed")
        ready = False
    status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health.set(name, status)


async def _refresh_forever(runtime: Runtime, health: HealthServicer, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        await refresh_health(runtime, health)


class InitialMetadata(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Sends fixed initial metadata (e.g. which worker of a group answers) with every unary-unary response."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        metadata = self.metadata

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.send_initial_metadata(metadata)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def start_grpc_server(
    runtime: Runtime,
    service: ScanService,
    host: str,
    port: int,
    *,
    health_refresh_s: float = HEALTH_REFRESH_S,
    max_pending_auth: int = MAX_PENDING_AUTH,
    reuse_port: bool = False,
    metadata: tuple[tuple[str, str], ...] = (),
) -> GrpcServer:
    """Serve FaceRecognition, health and reflection on ``host:port`` (port 0 binds an ephemeral port).

    Runs on the caller's event loop, so it shares the runtime's batchers with the HTTP server. The bound
    port is ``result.port``; stop with ``await result.stop(grace)``. Calls are authenticated from their metadata
    before their message is read (at most ``max_pending_auth`` waiting at once). ``reuse_port``: the workers of
    ``facerec serve --workers N`` each bind the same port (the kernel spreads connections over them);
    ``metadata`` goes out as initial metadata with every unary response.
    """
    interceptors: list[grpc.aio.ServerInterceptor] = [AuthBeforeMessage(runtime, max_pending_auth)]
    if metadata:
        interceptors.append(InitialMetadata(metadata))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", runtime.settings.max_request_bytes + MESSAGE_HEADROOM),
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
            # grpc enables SO_REUSEPORT by default: a second process could then share a busy port silently.
            # Only a worker group asks for it (its supervisor checked that the port was free first).
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
    )
    # Not the generated helper: its deserializers turn a malformed message into UNKNOWN with parser internals.
    add_servicer(FaceRecognitionServicer(runtime, service), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server)
    # Status before the first request: a probe racing startup must not see the library's default SERVING.
    await refresh_health(runtime, health)
    try:
        bound = server.add_insecure_port(_address(host, port))
    except RuntimeError as exc:
        raise OSError(f"cannot bind gRPC to {_address(host, port)}") from exc
    await server.start()
    refresher = asyncio.create_task(_refresh_forever(runtime, health, health_refresh_s), name="grpc-health")
    log.info("gRPC serving on %s", _address(host, bound))
    return GrpcServer(server=server, port=bound, health=health, refresher=refresher)
