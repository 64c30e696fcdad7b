"""One error type for both transports, and the retry policy for overload answers."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

# Answers that mean "not now": the server refused before doing the work (429 / RESOURCE_EXHAUSTED) or could not
# serve (503 / UNAVAILABLE), with a retry hint.
RETRYABLE_HTTP = frozenset({429, 503})
RETRYABLE_GRPC = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE"})


class ApiError(Exception):
    """An error answer of the facerec API (problem+json over HTTP, status + trailers over gRPC).

    ``code`` is the server's stable error code (``no_face``, ``invalid_field``, ``overloaded``, ...);
    ``status`` the HTTP status (None over gRPC), ``grpc_code`` the gRPC status name (None over HTTP);
    ``retry_after_s`` the server's retry hint, when it sent one; ``failing_components`` (``low_quality`` only)
    the quality components each refused file fell short on, e.g. ``{"file1": ("size", "sharpness")}``.
    """

    def __init__(self, code: str, detail: str, *, status: int | None = None, grpc_code: str | None = None,
                 field: str | None = None, request_id: str | None = None,
                 retry_after_s: float | None = None,
                 failing_components: Mapping[str, tuple[str, ...]] | None = None) -> None:
        super().__init__(f"{code}: {detail}" + (f" ({field})" if field else ""))
        self.code, self.detail, self.status, self.grpc_code = code, detail, status, grpc_code
        self.field, self.request_id, self.retry_after_s = field, request_id, retry_after_s
        self.failing_components: dict[str, tuple[str, ...]] = dict(failing_components or {})

    @property
    def retryable(self) -> bool:
        """Whether a later retry may succeed (overload or temporary unavailability)."""
        return self.status in RETRYABLE_HTTP or self.grpc_code in RETRYABLE_GRPC


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How overload answers are retried.

    ``retries`` further attempts at most. Each waits the server's hint (``retry_after_ms``, ``Retry-After``, or
    the gRPC trailer ``facerec-retry-after-ms``), else ``backoff_s`` doubling per attempt; every wait is capped at
    ``max_delay_s`` and gets up to ``jitter`` (a fraction) added so that many clients do not retry in step.
    """

    retries: int = 3
    backoff_s: float = 0.1
    max_delay_s: float = 10.0
    jitter: float = 0.1

    def delay(self, attempt: int, error: ApiError) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        base = error.retry_after_s if error.retry_after_s is not None else self.backoff_s * (2 ** attempt)
        base = min(max(base, 0.0), self.max_delay_s)
        return base * (1.0 + random.uniform(0.0, self.jitter))

    def should_retry(self, attempt: int, error: ApiError) -> bool:
        return error.retryable and attempt < self.retries


NO_RETRY = RetryPolicy(retries=0)


def failing_from_body(value: object) -> dict[str, tuple[str, ...]]:
    """``failing_components`` of a problem+json body: ``{"file1": ["size"]}`` -> ``{"file1": ("size",)}``."""
    if not isinstance(value, dict):
        return {}
    return {str(k): tuple(str(c) for c in v) for k, v in value.items() if isinstance(v, list)}


def failing_from_trailer(value: str | None) -> dict[str, tuple[str, ...]]:
    """The gRPC trailer ``facerec-failing-components``: ``file1=size,sharpness;file2=pose``."""
    out: dict[str, tuple[str, ...]] = {}
    for part in (value or "").split(";"):
        name, sep, comps = part.partition("=")
        if sep and name:
            out[name] = tuple(c for c in comps.split(",") if c)
    return out


def retry_after_from(header: str | None, body_ms: object) -> float | None:
    """The hint in seconds: ``retry_after_ms`` (ms precision) first, else the ``Retry-After`` header (seconds)."""
    if isinstance(body_ms, int | float) and not isinstance(body_ms, bool) and math.isfinite(body_ms):
        return max(0.0, float(body_ms) / 1000.0)
    if header is not None:
        try:
            return max(0.0, float(header))
        except ValueError:
            return None  # an HTTP-date: not sent by this server
    return None
