"""Dependencies resolving the caller (bearer token -> Principal) and the shared service from app state."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import State

from server.auth import parse_authorization_header
from server.domain import Principal
from server.errors import Unauthorized
from server.runtime import Runtime
from server.service import ScanService


async def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    """The verified caller; any failure is ``Unauthorized`` (401 with a ``WWW-Authenticate`` challenge).

    Resolved before the handler reads the body, so an unauthenticated upload is refused unread.
    """
    runtime: Runtime = request.app.state.runtime
    values = request.headers.getall("authorization", [])
    if len(values) > 1:
        # Which one would count is anybody's guess (proxies and frameworks disagree): refuse, as gRPC does.
        raise Unauthorized("more than one authorization header")
    token = parse_authorization_header(values[0] if values else None)
    return await runtime.verifier.verify(token)


def provide_service(state: State) -> ScanService:
    """The app's one :class:`ScanService` (set by the lifespan, or by ``create_app`` with a runtime)."""
    service: ScanService = state.service
    return service
