"""Per-request context: the X-Request-ID header (echoed, and put in log records), the access log, the latency
metric, and the security headers every response carries."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, cast

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from server.disconnect import access_status, client_gone, noting_disconnect
from server.logsafe import safe_path, safe_text

REQUEST_ID_HEADER = "x-request-id"
# Sent on every response (added where a handler did not set its own): no MIME sniffing, no referrer leaking
# ids in URLs to other sites, no framing, and no caching of responses that hold personal data.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
)
access_log = logging.getLogger("server.access")
_STATE_KEY = "request_id"
# Echoed into headers and logs, so only a short, inert alphabet is accepted from callers.
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


def request_id_of(scope: Scope | MutableMapping[str, Any]) -> str:
    """The request's id: a sane incoming ``X-Request-ID``, else a fresh one; remembered in the scope state."""
    state = cast("dict[str, Any]", scope.setdefault("state", {}))
    rid = state.get(_STATE_KEY)
    if isinstance(rid, str):
        return rid
    rid = None
    for name, value in scope.get("headers", ()):
        if name.lower() == REQUEST_ID_HEADER.encode():
            candidate = value.decode("latin-1")
            rid = candidate if _SANE_ID.fullmatch(candidate) else None
            break
    rid = rid or uuid.uuid4().hex
    state[_STATE_KEY] = rid
    return rid


class RequestIdLogFilter(logging.Filter):
    """Adds ``request_id`` to every log record ("-" outside a request) so formats may print it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        return True


async def add_security_headers(message: Message, scope: Scope) -> None:
    """Litestar ``before_send`` hook: :data:`SECURITY_HEADERS` on every HTTP response, routed or not."""
    if message["type"] != "http.response.start":
        return
    headers = list(message.get("headers", ()))
    present = {name.lower() for name, _ in headers}
    headers += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
    message["headers"] = headers


class RequestContextMiddleware(ASGIMiddleware):
    """Sets the request id for the handler and its logs, echoes it, times the request by route template."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        rid = request_id_of(scope)
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = 500  # what the client sees if the app dies before answering
        completed = False  # the whole answer was handed over before the client was known to be gone
        receive = noting_disconnect(scope, receive)

        async def send_with_id(message: Message) -> None:
            nonlocal status, completed
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                completed = not client_gone(scope)
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                # Error responses already carry the id (the problem handler also serves unrouted requests).
                if not any(k.lower() == REQUEST_ID_HEADER.encode() for k, _ in headers):
                    headers.append((REQUEST_ID_HEADER.encode(), rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await next_app(scope, receive, send_with_id)
        finally:
            # One access record per request, inside its context so it carries the request id. The path has no
            # query string (filters may hold callers' references) and no header is logged (tokens); what the
            # client sent is escaped so it cannot forge or hide a line.
            status = access_status(scope, status, completed)
            access_log.info("%s %s %d %.1f ms", safe_text(scope.get("method", "")), safe_path(scope.get("path", "")),
                            status, (time.perf_counter() - started) * 1000.0)
            request_id_var.reset(token)
            runtime = scope["litestar_app"].state.get("runtime")
            if runtime is not None:
                # The route template (not the raw path) keeps the label set small: ids never become labels.
                runtime.metrics.http_request_duration.labels(
                    method=scope.get("method", ""), route=scope.get("path_template") or "unmatched",
                    status=str(status),
                ).observe(time.perf_counter() - started)
