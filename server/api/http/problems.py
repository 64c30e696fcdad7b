"""Every error as ``application/problem+json`` (RFC 9457) with a stable ``code``; 5xx never show internals."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from server.api.http.middleware import REQUEST_ID_HEADER, request_id_of
from server.api.schemas import Problem
from server.disconnect import client_gone
from server.errors import FacerecError, Forbidden, LowQuality, Overloaded, Unauthorized, Unavailable
from server.logsafe import safe_path, safe_text

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://facerec.dev/problems/"

# Litestar raises its own exceptions for routing, body limits and parameter parsing; they get our codes too.
_HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "overloaded",
    503: "unavailable",
}


def retry_after_seconds(retry_after_ms: int) -> int:
    """``Retry-After`` carries whole seconds: round up so a client never retries too early."""
    return max(1, math.ceil(retry_after_ms / 1000))


def problem_response(
    request: Request[Any, Any, Any], *, status: int, code: str, title: str, detail: str | None = None,
    field: str | None = None, headers: Mapping[str, str] | None = None, extra: dict[str, Any] | None = None,
) -> Response[bytes]:
    """One problem+json response; the request id goes in the body and the header alike."""
    rid = request_id_of(request.scope)
    body = Problem(type=PROBLEM_TYPE_BASE + code, title=title, status=status, code=code, detail=detail,
                   field=field, instance=request.url.path, request_id=rid, extra=extra)
    raw = msgspec.to_builtins(body)
    if extra:
        # Extras (e.g. retry_after_ms) are top-level members, as RFC 9457 extension members are.
        raw.update(raw.pop("extra"))
    return Response(content=msgspec.json.encode(raw), status_code=status, media_type=PROBLEM_MEDIA_TYPE,
                    headers={REQUEST_ID_HEADER: rid, **(headers or {})})


def _challenge(error: str | None) -> str:
    # RFC 6750 §3: no error code when the request carried no credentials at all.
    return 'Bearer realm="facerec"' + (f', error="{error}"' if error else "")


def facerec_error_handler(request: Request[Any, Any, Any], exc: FacerecError) -> Response[bytes]:
    """Our taxonomy: status, code, title and a caller-safe detail straight from the error."""
    headers: dict[str, str] = {}
    extra: dict[str, Any] | None = None
    if isinstance(exc, Overloaded | Unavailable):
        headers["Retry-After"] = str(retry_after_seconds(exc.retry_after_ms))
        extra = {"retry_after_ms": exc.retry_after_ms}
    elif isinstance(exc, Unauthorized):
        has_credentials = "authorization" in request.headers
        headers["WWW-Authenticate"] = _challenge("invalid_token" if has_credentials else None)
    elif isinstance(exc, Forbidden):
        headers["WWW-Authenticate"] = _challenge("insufficient_scope")
    elif isinstance(exc, LowQuality):
        extra = {"quality_filter": exc.quality_filter, "failing_components": exc.failing}
    if exc.status >= 500:
        log.error("request failed: %s (%s)", exc.code, exc.detail, exc_info=exc)
    return problem_response(request, status=exc.status, code=exc.code, title=exc.title, detail=exc.detail,
                            field=exc.field, headers=headers, extra=extra)


def http_exception_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's 4xx (no route, wrong method, body too large, unparsable parameter) in our shape."""
    status = exc.status_code
    code = _HTTP_CODES.get(status, f"http_{status}")
    field: str | None = None
    detail = exc.detail
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list) and exc.extra:
        # Parameter errors name the offending parameter; Litestar's own detail echoes the whole URL.
        first = exc.extra[0]
        if isinstance(first, dict) and first.get("key"):
            code, field = "invalid_field", str(first["key"])
            detail = f"invalid value for {field}: {first.get('message', 'invalid')}"
    elif status == 413:
        detail = "request body too large"
    headers = dict(exc.headers or {})
    return problem_response(request, status=status, code=code, title=HTTPStatus(status).phrase, detail=detail,
                            field=field, headers=headers)


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Anything unforeseen: logged with its traceback here, never shown to the caller.

    A client that disconnected while its body was being read makes Litestar raise a 500: that is no server fault,
    so it is an INFO line without a traceback (the access line records 499).
    """
    if client_gone(request.scope):
        log.info("client closed the connection during %s %s", safe_text(request.method),
                 safe_path(request.url.path))
    else:
        log.error("unhandled error on %s %s", safe_text(request.method), safe_path(request.url.path), exc_info=exc)
    return problem_response(request, status=500, code="internal_error", title="Internal server error",
                            detail="an internal error occurred; quote the request id when reporting it")


# Litestar picks a status-code key before the exception's MRO for HTTPExceptions, and the 500 key for anything
# that matches no class: so Litestar's own 500s and foreign exceptions both land in internal_error_handler.
EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    FacerecError: facerec_error_handler,
    HTTPException: http_exception_handler,
    500: internal_error_handler,
}
