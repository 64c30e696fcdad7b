"""Prometheus metrics of one app instance, on a registry of its own (no process-global state)."""

from __future__ import annotations

import platform
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# Request latencies span a cache hit (ms) to a cold multi-face scan (seconds).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Queue and batch times are dominated by max_wait_ms (a few ms), so the low end needs resolution.
_SHORT_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

REJECT_REASONS = ("overloaded", "deadline", "cancelled", "memory")


class Metrics:
    """Every metric the service exports; one instance per app so tests never share a registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.http_request_duration = Histogram(
            "facerec_http_request_duration_seconds",
            "HTTP request latency.",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.grpc_request_duration = Histogram(
            "facerec_grpc_request_duration_seconds",
            "gRPC request latency.",
            ["method", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "facerec_batch_size",
            "Rows (images or crops) per inference batch.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "facerec_queue_time_seconds",
            "Per-item time (one pipeline stage call of a request) from submit to the start of its batch.",
            ["model"],
            buckets=_SHORT_BUCKETS,
            registry=r,
        )
        self.inference_time = Histogram(
            "facerec_inference_time_seconds",
            "Wall time of one batch call.",
            ["model"],
            buckets=_SHORT_BUCKETS,
            registry=r,
        )
        # livesum: with `--workers N` the exported value is the sum over the live workers (no per-pid series).
        self.queue_depth = Gauge("facerec_queue_depth", "Rows waiting for a batch.", ["model"], registry=r,
                                 multiprocess_mode="livesum")
        self.batch_items = Counter(
            "facerec_batch_items_total",
            "Rows sent to inference, by the transport that submitted them.",
            ["model", "source"],
            registry=r,
        )
        self.mixed_batches = Counter(
            "facerec_mixed_batches_total",
            "Batches holding items from more than one source (e.g. HTTP and gRPC together).",
            ["model"],
            registry=r,
        )
        self.requests_rejected = Counter(
            "facerec_requests_rejected_total",
            "Requests refused at admission (overloaded) or ended unfinished (deadline, cancelled).",
            ["reason"],
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "facerec_requests_in_flight", "Compare requests admitted and not yet finished.", registry=r,
            multiprocess_mode="livesum",
        )
        self.rows_dropped = Counter(
            "facerec_rows_dropped_total",
            "Queued rows dropped before reaching the model (their request's deadline passed, or it left).",
            ["model", "reason"],
            registry=r,
        )
        self.decode_memory_bytes = Gauge(
            "facerec_decode_memory_bytes", "Bytes of the decode memory budget held by compares.", registry=r)
        self.decode_memory_waiting = Gauge(
            "facerec_decode_memory_waiting", "Compares waiting for the decode memory budget.", registry=r)
        self.scans = Counter("facerec_scans_total", "Scans by result.", ["result"], registry=r)
        self.inference_errors = Counter(
            "facerec_inference_errors_total", "Failed inference batches.", ["model"], registry=r
        )

        # process_* (CPU, RSS, open fds, start time) and python_info, on this registry rather than the global one.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Info("facerec_build", "Version of the running server and of its key libraries.", registry=r)
        self.build_info.info(build_info())

    def render(self) -> tuple[bytes, str]:
        """The exposition text of this registry and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def value(self, name: str, **labels: str) -> float:
        """One sample's value by its full exposed name (e.g. ``facerec_batch_items_total``); 0 if absent."""
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    def histogram_stats(self, name: str, **labels: str) -> tuple[float, float]:
        """``(sum, count)`` of a histogram by its base name (e.g. ``facerec_batch_size``); zeros if absent."""
        return self.value(f"{name}_sum", **labels), self.value(f"{name}_count", **labels)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def build_info() -> dict[str, str]:
    """Labels of ``facerec_build_info``: what is running, for dashboards and incident notes."""
    ort = next((v for v in (_version("onnxruntime"), _version("onnxruntime-gpu")) if v != "unknown"), "unknown")
    return {"version": _version("facerec"), "python": platform.python_version(), "onnxruntime": ort,
            "litestar": _version("litestar"), "grpcio": _version("grpcio")}
