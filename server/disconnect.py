"""ASGI middleware: when an HTTP client disconnects before its answer, cancel the request's handler.

ASGI servers (uvicorn included) do not cancel a handler whose client has left: a compare would keep its rows
queued in the batchers and run inference for nobody. Once the request body has been read, this middleware
watches the connection; a disconnect before the response starts cancels the handler task, and the batchers
drop the cancelled rows before they reach the backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

# nginx's status for "the client closed the connection before the answer": not a server fault, so not a 5xx.
CLIENT_CLOSED = 499
CLIENT_GONE_KEY = "facerec.client_gone"  # scope key: the client disconnected before its answer was complete
CLOSED_STATUS_KEY = "facerec.closed_status"  # scope key: the status the HTTP protocol itself answered with


def client_gone(scope: Scope) -> bool:
    """Whether the request's client is known to have disconnected."""
    return bool(scope.get(CLIENT_GONE_KEY))


def noting_disconnect(scope: Scope, receive: Receive) -> Receive:
    """``receive`` that marks the scope when the client disconnects (see :func:`client_gone`)."""

    async def wrapped() -> ReceiveMessage:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope[CLIENT_GONE_KEY] = True  # type: ignore[literal-required]
        return message

    return wrapped


def access_status(scope: Scope, sent: int, completed: bool) -> int:
    """The status an access line records: what the protocol answered itself, 499 when the client left before the
    answer was complete (whatever the app then tried to send), else what the app sent."""
    closed = scope.get(CLOSED_STATUS_KEY)
    if isinstance(closed, int):
        return closed
    if client_gone(scope) and not completed:
        return CLIENT_CLOSED
    return sent


class CancelOnDisconnect(ASGIMiddleware):
    """Cancels the handler of a watched ``POST`` path when its client disconnects before the response."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, paths: Collection[str]) -> None:
        self.paths = frozenset(paths)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if scope.get("method") != "POST" or scope.get("path") not in self.paths:
            await next_app(scope, receive, send)
            return
        watcher: asyncio.Task[ReceiveMessage] | None = None
        started = False
        left = False

        async def watch() -> ReceiveMessage:
            nonlocal left
            message = await receive()
            if message["type"] == "http.disconnect" and not started and not handler.done():
                left = True
                handler.cancel()
            return message

        async def watched_receive() -> ReceiveMessage:
            nonlocal watcher
            if watcher is not None:  # the body is complete: the only thing left to hear is the disconnect
                return await asyncio.shield(watcher)
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                watcher = asyncio.ensure_future(watch())
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        handler = asyncio.ensure_future(next_app(scope, watched_receive, watched_send))
        try:
            await handler
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if left and (current is None or not current.cancelling()):
                return  # the client left: there is nobody to answer
            raise
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()
