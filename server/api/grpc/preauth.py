"""A server interceptor that authenticates each FaceRecognition call from its metadata before its message is read.

grpc.aio runs interceptors once a call's metadata has arrived and before it receives the request message
(``_find_method_handler`` precedes ``_receive_message`` in grpc's ``_handle_rpc``). A refused call gets a
client-streaming handler that aborts without reading: its message (up to the 24 MB limit) is never buffered whole
or parsed. The servicer still verifies the token itself (it needs the principal); this check only decides whether
the message is worth reading. Calls waiting for authentication (a JWKS fetch from a slow IdP) are capped.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from server.api.grpc.servicer import SERVICE_NAME, bearer_of, error_metadata
from server.api.grpc.status import grpc_status
from server.errors import FacerecError, Overloaded
from server.runtime import Runtime

# Each waiting call holds only its metadata and what the transport buffered; a burst beyond this is refused.
MAX_PENDING_AUTH = 64
RETRY_AFTER_MS = 1000

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]


class AuthBeforeMessage(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses FaceRecognition calls whose metadata carries no valid bearer token, before their message is read."""

    def __init__(self, runtime: Runtime, max_pending: int = MAX_PENDING_AUTH) -> None:
        self._runtime = runtime
        self._max_pending = max_pending
        self._pending = 0
        self._prefix = f"/{SERVICE_NAME}/"

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method or ""
        if not method.startswith(self._prefix):
            return await continuation(handler_call_details)  # health, reflection: public
        started = time.perf_counter()
        name = method[len(self._prefix):]
        if self._pending >= self._max_pending:
            return self._refusal(Overloaded("too many calls waiting for authentication",
                                            retry_after_ms=RETRY_AFTER_MS), name, started)
        self._pending += 1
        try:
            await self._runtime.verifier.verify(bearer_of(handler_call_details.invocation_metadata))
        except FacerecError as err:
            return self._refusal(err, name, started)
        finally:
            self._pending -= 1
        return await continuation(handler_call_details)

    def _refusal(self, err: FacerecError, method: str, started: float) -> grpc.RpcMethodHandler:
        status = grpc_status(err)
        metrics = self._runtime.metrics

        async def refuse(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> None:
            # The request iterator is never touched: nothing of the message is received or parsed.
            metrics.grpc_request_duration.labels(method=method, code=status.name).observe(
                time.perf_counter() - started)
            await context.abort(status, err.detail, trailing_metadata=error_metadata(err))

        return grpc.stream_unary_rpc_method_handler(refuse)
