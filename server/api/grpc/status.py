"""The error taxonomy's gRPC status codes: one table from the HTTP status each error carries."""

from __future__ import annotations

import grpc

from server.errors import DeadlineExceeded, FacerecError

GRPC_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.FAILED_PRECONDITION,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}


def grpc_status(err: FacerecError) -> grpc.StatusCode:
    """gRPC status code of an error (deadlines map to DEADLINE_EXCEEDED)."""
    if isinstance(err, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return GRPC_CODES.get(err.status, grpc.StatusCode.INTERNAL)
