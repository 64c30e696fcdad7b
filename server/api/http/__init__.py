"""The HTTP API: Litestar controllers, dependencies, problem+json errors and request middleware."""

from server.api.http.auth import provide_principal, provide_service
from server.api.http.controllers import CompareController, HealthController, ScanController
from server.api.http.middleware import RequestContextMiddleware, RequestIdLogFilter, add_security_headers
from server.api.http.problems import EXCEPTION_HANDLERS

ROUTE_HANDLERS = [CompareController, ScanController, HealthController]

__all__ = [
    "EXCEPTION_HANDLERS",
    "ROUTE_HANDLERS",
    "RequestContextMiddleware",
    "RequestIdLogFilter",
    "add_security_headers",
    "provide_principal",
    "provide_service",
]
