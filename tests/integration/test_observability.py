"""What operators see: JSON logs with request and trace ids, W3C traceparent in and out, auth failure reasons in
the log (never the token), OpenTelemetry spans for decode, each model batch and the store, process and build
metrics, HEAD on the health routes. Real app, real models, real SQLite."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from harness import Harness, base_settings, serve

from server import tracing
from server.auth import ALL_ROLES, LOCAL_ISSUER
from server.inference.backend import InferenceBackend
from server.logs import ContextFilter, JsonFormatter
from tooling.serve import ServeProcess

pytestmark = pytest.mark.asyncio(loop_scope="module")

PAIR = ("obama_01_portrait_2012.jpg", "obama_02_congress_2009.jpg")
PARENT_TRACE, PARENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"
TRACEPARENT_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]")


def mint(h: Harness, roles: Any = ALL_ROLES, audience: str | None = None) -> str:
    """A token of the harness's issuer, for this server's audience unless another is asked for."""
    issuer = h.runtime.local_issuer
    assert issuer is not None
    s = h.runtime.settings
    return issuer.mint("obsco", "alice", roles, 600, audience or s.auth_audience, LOCAL_ISSUER,
                       company_claim=s.auth_company_claim, roles_claim=s.auth_roles_claim)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(backend: InferenceBackend, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    async with serve(base_settings(tmp_path_factory.mktemp("obs")), backend=backend, company="obsco") as h:
        yield h


class JsonLines(logging.Handler):
    """Formats records exactly as ``FACEREC_LOG_FORMAT=json`` does and keeps the lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(ContextFilter())
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


@pytest.fixture
def json_log() -> Iterator[JsonLines]:
    handler = JsonLines()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


async def compare(env: Harness, image_bytes: Any, **headers: str) -> httpx.Response:
    files = {"file1": ("a.jpg", image_bytes(PAIR[0]), "image/jpeg"), "file2": ("b.jpg", image_bytes(PAIR[1]),
                                                                              "image/jpeg")}
    return await env.http.post("/v1/compare_face", data={"channel": "WEB", "reference": "obs-1"}, files=files,
                                 headers={"Authorization": f"Bearer {mint(env)}", **headers})


async def test_json_access_log_carries_request_and_trace_ids(env: Harness, image_bytes: Any,
                                                              json_log: JsonLines) -> None:
    r = await compare(env, image_bytes, traceparent=TRACEPARENT, **{"X-Request-ID": "obs-req-1"})
    assert r.status_code == 200, r.text
    m = TRACEPARENT_RE.fullmatch(r.headers["traceparent"])
    assert m is not None and m.group(1) == PARENT_TRACE and m.group(2) != PARENT_SPAN
    access = [rec for rec in json_log.records() if rec["logger"] == "server.access"]
    assert len(access) == 1
    rec = access[0]
    assert rec["request_id"] == "obs-req-1" == r.headers["x-request-id"]
    assert rec["trace_id"] == PARENT_TRACE
    assert (rec["level"], rec["method"], rec["route"], rec["status"]) == ("INFO", "POST", "/v1/compare_face", 200)
    assert rec["duration_ms"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", rec["timestamp"])


@pytest.mark.parametrize("incoming", [None, "garbage", f"00-{'0' * 32}-{PARENT_SPAN}-01",
                                      f"ff-{PARENT_TRACE}-{PARENT_SPAN}-01"])
async def test_a_missing_or_invalid_traceparent_starts_a_new_trace(env: Harness, incoming: str | None,
                                                                   json_log: JsonLines) -> None:
    headers = {"traceparent": incoming} if incoming else {}
    r = await env.http.get("/health/live", headers=headers)
    m = TRACEPARENT_RE.fullmatch(r.headers["traceparent"])
    assert m is not None and m.group(1) not in (PARENT_TRACE, "0" * 32)
    (rec,) = [rec for rec in json_log.records() if rec["logger"] == "server.access"]
    assert rec["trace_id"] == m.group(1)


async def test_unrouted_requests_have_one_json_access_record_and_a_bounded_method_label(env: Harness,
                                                                                          json_log: JsonLines) -> None:
    """The context middleware wraps routing, so a 404 or 405 gets its (one) access record and trace id like any
    request; a method no route knows is counted as "OTHER" (httptools refuses most invented methods, other ASGI
    servers do not), while its record keeps what was sent, escaped."""
    r = await env.http.request("FROBNICATE", "/no/such/route", headers={"X-Request-ID": "obs-unrouted"})
    assert r.status_code == 404 and r.headers["x-request-id"] == "obs-unrouted"
    assert (await env.http.put("/v1/compare_face", headers={"X-Request-ID": "obs-405"})).status_code == 405
    access = {rec["request_id"]: rec for rec in json_log.records() if rec["logger"] == "server.access"}
    assert len([rec for rec in json_log.records() if rec["logger"] == "server.access"]) == 2
    assert (access["obs-unrouted"]["method"], access["obs-unrouted"]["route"], access["obs-unrouted"]["status"]) \
        == ("FROBNICATE", "unmatched", 404)
    assert (access["obs-405"]["method"], access["obs-405"]["status"]) == ("PUT", 405)
    assert all(rec.get("trace_id") for rec in access.values())
    metrics = env.runtime.metrics
    assert metrics.value("facerec_http_request_duration_seconds_count", method="OTHER", route="unmatched",
                         status="404") == 1
    assert metrics.value("facerec_http_request_duration_seconds_count", method="FROBNICATE", route="unmatched",
                         status="404") == 0


async def test_auth_failures_are_logged_with_the_reason_never_the_token(env: Harness, json_log: JsonLines) -> None:
    # Keycloak's default access token: aud=account, which is not this server's audience.
    wrong_audience = mint(env, audience="account")
    r = await env.http.get("/v1/face-recognition", headers={"Authorization": f"Bearer {wrong_audience}"})
    assert r.status_code == 401
    no_role = mint(env, roles=["face:read"])
    r = await env.http.delete("/v1/face-recognition/8c5b2a52-4a51-4f7e-9d7c-6d1f3d1f0b3e",
                                headers={"Authorization": f"Bearer {no_role}"})
    assert r.status_code == 403
    r = await env.http.get("/v1/face-recognition")
    assert r.status_code == 401
    records = json_log.records()
    reasons = [rec for rec in records if "auth_failure" in rec]
    assert [rec["auth_failure"] for rec in reasons] == ["wrong audience", "missing role face:delete",
                                                        "missing bearer token"]
    assert "aud='account'" in reasons[0]["message"]  # what to fix at the identity provider
    assert "lacks role face:delete" in reasons[1]["message"]
    assert all(rec.get("request_id") for rec in reasons)
    text = "\n".join(json_log.lines)
    for token in (wrong_audience, no_role):
        assert token not in text and token.split(".")[2] not in text


async def test_spans_for_request_decode_batches_and_store(env: Harness, image_bytes: Any) -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra is not installed")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure("console", provider=provider)
    try:
        r = await compare(env, image_bytes, traceparent=TRACEPARENT)
    finally:
        tracing.configure("off")
    assert r.status_code == 200, r.text
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.name == "HTTP POST"]
    assert f"{server.context.trace_id:032x}" == PARENT_TRACE
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_SPAN
    assert server.attributes["http.route"] == "/v1/compare_face"
    assert server.attributes["http.response.status_code"] == 200
    assert r.headers["traceparent"] == f"00-{PARENT_TRACE}-{server.context.span_id:016x}-01"
    in_request = [s for s in spans if s.context.trace_id == server.context.trace_id and s is not server]
    decodes = [s for s in in_request if s.name == "decode"]
    assert len(decodes) == 2 and all(s.parent.span_id == server.context.span_id for s in decodes)
    assert sorted(s.attributes["field"] for s in decodes) == ["file1", "file2"]
    (store,) = [s for s in in_request if s.name == "store.add"]
    assert store.parent.span_id == server.context.span_id
    # A batch serves many requests: its span stands alone, named after its model, with the batch size.
    batches = {s.name for s in spans if s.name.startswith("infer ")}
    assert batches >= {"infer detector", "infer landmarker", "infer embedder"}
    assert all(s.attributes["batch.size"] >= 1 for s in spans if s.name.startswith("infer "))


async def test_process_and_build_metrics(env: Harness) -> None:
    text = (await env.http.get("/metrics")).text
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
                 "python_info", "facerec_build_info"):
        assert re.search(rf"^{name}(\{{.*\}})? ", text, re.M), name
    assert re.search(r'^facerec_build_info\{.*version="[^"]+".*\} 1\.0$', text, re.M)


async def test_head_on_health_routes(env: Harness) -> None:
    live = await env.http.head("/health/live")
    ready = await env.http.head("/health/ready")
    assert (live.status_code, ready.status_code) == (200, 200)
    assert live.content == b"" and ready.content == b""
    assert "x-request-id" in live.headers


async def test_serve_writes_json_lines(tmp_path: Path, backend: Any) -> None:
    """The real process with FACEREC_LOG_FORMAT=json: every line on its output is one JSON object."""
    proc = ServeProcess(tmp_path / "data", env={"FACEREC_LOG_FORMAT": "json"}).start()
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.get(f"{proc.url}/health/live", headers={"traceparent": TRACEPARENT})
        assert resp.headers["traceparent"].startswith(f"00-{PARENT_TRACE}-")
    finally:
        proc.stop()
    lines = [ln for ln in proc.log().splitlines() if ln.startswith("{")]
    records = [json.loads(ln) for ln in lines]
    assert any(r["logger"] == "server.access" and r.get("trace_id") == PARENT_TRACE and r["route"] == "/health/live"
               for r in records)
    assert {"timestamp", "level", "logger", "message"} <= set(records[0])
