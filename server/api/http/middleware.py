"""Per-request context: the X-Request-ID header (echoed, and put in log records), the W3C trace context
(``traceparent`` accepted and sent back), the access log, the latency metric, and the security headers every
response carries."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import MutableMapping
from typing import Any, cast

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from server import tracing
from server.api.http.docs import DOCS_CSP, DOCS_PATHS
from server.disconnect import access_status, client_gone, noting_disconnect
from server.logs import ContextFilter, request_id_var
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
# Methods a metric label or span name may carry as sent; any other token is counted as "OTHER".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
_STATE_KEY = "request_id"
# Echoed into headers and logs, so only a short, inert alphabet is accepted from callers.
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

__all__ = ["REQUEST_ID_HEADER", "RequestContextMiddleware", "RequestIdLogFilter", "add_security_headers",
           "request_id_of", "request_id_var"]


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


# Adds request_id and trace_id to every log record (kept under its old name for callers).
RequestIdLogFilter = ContextFilter


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


# API responses are data, never a document: nothing may load or frame them. The docs page gets its own policy
# (same origin only: its assets are served by the app, so no CDN is ever contacted).
API_CSP = b"default-src 'none'; frame-ancestors 'none'"


async def add_security_headers(message: Message, scope: Scope) -> None:
    """Litestar ``before_send`` hook: :data:`SECURITY_HEADERS` and a CSP on every HTTP response, routed or not."""
    if message["type"] != "http.response.start":
        return
    headers = list(message.get("headers", ()))
    present = {name.lower() for name, _ in headers}
    headers += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
    if b"content-security-policy" not in present:
        docs = scope.get("path", "") in DOCS_PATHS
        headers.append((b"content-security-policy", DOCS_CSP.encode() if docs else API_CSP))
    message["headers"] = headers


class RequestContextMiddleware(ASGIMiddleware):
    """Sets the request id for the handler and its logs, echoes it, times the request by route template, writes
    the one access line per request. The app installs it around routing (``server.app._log_every_request``), not
    as route middleware, so requests no route matches (404, 405) get their line and metric too."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        rid = request_id_of(scope)
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = 500  # what the client sees if the app dies before answering
        raw_method = str(scope.get("method", ""))
        # Unrouted requests are logged and counted too (the middleware wraps routing): a method no route knows
        # is one label value, not one per string a client invents.
        method = raw_method if raw_method in KNOWN_METHODS else "OTHER"
        parent = tracing.parse_traceparent(_header(scope, tracing.TRACEPARENT.encode()))
        completed = False  # the whole answer was handed over before the client was known to be gone
        receive = noting_disconnect(scope, receive)

        with tracing.request_span(f"HTTP {method}", parent, {"http.request.method": method}) as trace:

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
                    headers.append((tracing.TRACEPARENT.encode(), trace.traceparent.encode()))
                    message = {**message, "headers": headers}
                await send(message)

            try:
                await next_app(scope, receive, send_with_id)
            finally:
                elapsed = time.perf_counter() - started
                route = scope.get("path_template") or "unmatched"
                # 499 when the client left before its answer was complete, the protocol's own status when it
                # answered itself (431, 408, ...): a 5xx means a server fault, never a departed client.
                status = access_status(scope, status, completed)
                tracing.set_attribute("http.route", route)
                tracing.set_attribute("http.response.status_code", status)
                # One access record per request (routed or not), inside its context so it carries the request and
                # trace ids, in either log format. The path has no query string (filters may hold callers'
                # references) and no header is logged; what the client sent is escaped, in the message and in the
                # JSON members alike, so it can neither forge a record nor hide text.
                path, shown_method = safe_path(str(scope.get("path", ""))), safe_text(raw_method)
                access_log.info("%s %s %d %.1f ms", shown_method, path, status, elapsed * 1000.0,
                                extra={"method": shown_method, "path": path, "route": route,
                                       "status": status, "duration_ms": round(elapsed * 1000.0, 3)})
                request_id_var.reset(token)
                runtime = scope["litestar_app"].state.get("runtime")
                if runtime is not None:
                    # The route template (not the raw path) keeps the label set small: ids never become labels.
                    runtime.metrics.http_request_duration.labels(method=method, route=route,
                                                                 status=str(status)).observe(elapsed)
