"""Typed client of the facerec API: HTTP and gRPC, sync and async, retries on overload honouring the server's hint."""

from facerec_client.errors import NO_RETRY, ApiError, RetryPolicy
from facerec_client.grpc import AsyncGrpcClient, GrpcClient
from facerec_client.http import AsyncClient, Client
from facerec_client.models import (
    Channel,
    Comparison,
    Face,
    Point,
    QualityComponents,
    QualityFilter,
    Scan,
    ScanFilter,
    ScanPage,
    Verdict,
)

__all__ = [
    "NO_RETRY",
    "ApiError",
    "AsyncClient",
    "AsyncGrpcClient",
    "Channel",
    "Client",
    "Comparison",
    "Face",
    "GrpcClient",
    "Point",
    "QualityComponents",
    "QualityFilter",
    "RetryPolicy",
    "Scan",
    "ScanFilter",
    "ScanPage",
    "Verdict",
]
