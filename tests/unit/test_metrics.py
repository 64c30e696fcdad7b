"""Unit tests of the per-app Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from server.metrics import Metrics


def test_each_instance_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    assert a.registry is not b.registry
    a.scans.labels(result="match").inc()
    assert a.value("facerec_scans_total", result="match") == 1
    assert b.value("facerec_scans_total", result="match") == 0


def test_accepts_a_given_registry() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    assert m.registry is reg


def test_render_exposes_every_metric() -> None:
    m = Metrics()
    m.http_request_duration.labels(method="POST", route="/v1/scans", status="201").observe(0.12)
    m.grpc_request_duration.labels(method="Compare", code="OK").observe(0.05)
    m.batch_size.labels(model="arcface").observe(8)
    m.queue_time.labels(model="arcface").observe(0.002)
    m.inference_time.labels(model="arcface").observe(0.01)
    m.queue_depth.labels(model="arcface").set(3)
    m.batch_items.labels(model="arcface", source="http").inc(5)
    m.mixed_batches.labels(model="arcface").inc()
    m.requests_rejected.labels(reason="overloaded").inc()
    m.scans.labels(result="no_match").inc()
    m.inference_errors.labels(model="arcface").inc()
    body, content_type = m.render()
    assert content_type.startswith("text/plain")
    text = body.decode()
    for name in (
        "facerec_http_request_duration_seconds_bucket",
        "facerec_grpc_request_duration_seconds_count",
        'facerec_batch_size_bucket{le="8.0",model="arcface"} 1.0',
        'facerec_batch_size_bucket{le="4.0",model="arcface"} 0.0',
        "facerec_queue_time_seconds_sum",
        "facerec_inference_time_seconds_sum",
        'facerec_queue_depth{model="arcface"} 3.0',
        'facerec_batch_items_total{model="arcface",source="http"} 5.0',
        'facerec_mixed_batches_total{model="arcface"} 1.0',
        'facerec_requests_rejected_total{reason="overloaded"} 1.0',
        'facerec_scans_total{result="no_match"} 1.0',
        'facerec_inference_errors_total{model="arcface"} 1.0',
    ):
        assert name in text, name


def test_batch_size_buckets() -> None:
    m = Metrics()
    m.batch_size.labels(model="m").observe(1)
    for le in ("1.0", "2.0", "4.0", "8.0", "16.0", "32.0", "64.0", "128.0", "+Inf"):
        assert m.value("facerec_batch_size_bucket", model="m", le=le) == 1


def test_histogram_stats_reads_sum_and_count() -> None:
    m = Metrics()
    assert m.histogram_stats("facerec_inference_time_seconds", model="arcface") == (0.0, 0.0)
    h = m.inference_time.labels(model="arcface")
    h.observe(0.25)
    h.observe(0.5)
    assert m.histogram_stats("facerec_inference_time_seconds", model="arcface") == (0.75, 2.0)
    assert m.value("facerec_missing_metric") == 0.0
