"""Security headers and limits: hardening headers on every response, CORS off unless configured, no server banner,
X-Request-ID echoed (or replaced) and present in the log records of its request, bodies refused while streaming.

The banner, the access log format and the streamed 413 are checked on the real process (`facerec serve`) over a
loopback socket; the rest in-process on the real app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import COMPARE, LOCAL_CPU, SCANS, Harness

from server.api.http import RequestIdLogFilter
from server.auth import ALL_ROLES, LocalIssuer
from server.settings import PROJECT_ROOT
from tooling.serve import ServeProcess

pytestmark = [pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.served(max_request_bytes=300_000, max_file_bytes=200_000)]

HARDENING = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "x-frame-options": "DENY",
             "cache-control": "no-store"}
ORIGIN = "https://app.example"


def assert_hardened(resp: httpx.Response) -> None:
    for name, value in HARDENING.items():
        assert resp.headers.get(name) == value, (resp.request.url, name, dict(resp.headers))
    assert "server" not in resp.headers and "x-powered-by" not in resp.headers


async def test_hardening_headers_on_every_kind_of_response(env: Harness) -> None:
    h = env.headers()
    responses = [
        await env.http.get(SCANS, headers=h),  # personal data
        await env.http.get(f"{SCANS}/not-a-uuid", headers=h),  # 400 problem
        await env.http.get(SCANS),  # 401
        await env.http.get(SCANS, headers=env.headers(roles=[])),  # 403
        await env.http.get("/no/such/route"),  # 404, unrouted
        await env.http.put(COMPARE, headers=h),  # 405
        await env.http.post(COMPARE, headers={**h, "content-type": "multipart/form-data; boundary=x"},
                            content=b"x" * 400_000),  # 413
        await env.http.get("/health/live"),
        await env.http.get("/metrics"),
        await env.http.get("/schema/openapi.json"),
    ]
    assert [r.status_code for r in responses] == [200, 400, 401, 403, 404, 405, 413, 200, 200, 200]
    for resp in responses:
        assert_hardened(resp)
        assert resp.headers["x-request-id"]


async def test_cors_is_off_by_default(env: Harness) -> None:
    assert env.runtime.settings.cors_origins == ()
    preflight = await env.http.options(SCANS, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET",
                                                       "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code < 500
    assert not any(k.startswith("access-control-") for k in preflight.headers), dict(preflight.headers)
    simple = await env.http.get(SCANS, headers={**env.headers(), "Origin": ORIGIN})
    assert simple.status_code == 200
    assert "access-control-allow-origin" not in simple.headers


async def test_cors_on_when_origins_are_configured(serve_target: Any) -> None:
    async with serve_target(cors_origins=(ORIGIN,)) as api:
        ask = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
        allowed = await api.http.options(SCANS, headers={"Origin": ORIGIN, **ask})
        assert allowed.status_code in (200, 204), allowed.text
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        assert allowed.headers.get("access-control-allow-credentials") != "true"
        other = await api.http.options(SCANS, headers={"Origin": "https://evil.example", **ask})
        assert other.headers.get("access-control-allow-origin") not in ("https://evil.example", "*")
        simple = await api.http.get(SCANS, headers={**api.headers(), "Origin": ORIGIN})
        assert simple.status_code == 200
        assert simple.headers["access-control-allow-origin"] == ORIGIN
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
        evil = await api.http.get(SCANS, headers={**api.headers(), "Origin": "https://evil.example"})
        assert evil.headers.get("access-control-allow-origin") != "https://evil.example"


# --------------------------------------------------------------------------- X-Request-ID


@pytest.fixture
def request_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog at DEBUG with the app's request-id filter on its handler (as ``facerec serve`` installs it)."""
    flt = RequestIdLogFilter()
    caplog.handler.addFilter(flt)
    caplog.set_level(logging.DEBUG)
    yield caplog
    caplog.handler.removeFilter(flt)


def _records_of(caplog: pytest.LogCaptureFixture, rid: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "request_id", None) == rid]


async def test_request_id_echoed_and_in_the_log_records(env: Harness, request_logs: pytest.LogCaptureFixture) -> None:
    resp = await env.http.get(SCANS, headers={**env.headers(), "X-Request-ID": "trace-42.a_b"})
    assert resp.headers["x-request-id"] == "trace-42.a_b"
    records = _records_of(request_logs, "trace-42.a_b")
    assert any(r.name == "server.access" and "/v1/face-recognition" in r.getMessage() and " 200 " in
               r.getMessage() for r in records), [(r.name, r.getMessage()) for r in request_logs.records]
    # Problems carry it too, in the header and the body.
    bad = await env.http.get(f"{SCANS}/nope", headers={**env.headers(), "X-Request-ID": "trace-43"})
    assert bad.headers["x-request-id"] == "trace-43" == bad.json()["request_id"]
    assert _records_of(request_logs, "trace-43")


@pytest.mark.parametrize("incoming", ["has space", "semi;colon", "x" * 129, "ünï", "<script>", "a\\b", ""])
async def test_invalid_request_id_is_replaced(env: Harness, request_logs: pytest.LogCaptureFixture,
                                              incoming: str) -> None:
    resp = await env.http.get(SCANS, headers={**env.headers(), "X-Request-ID": incoming.encode()})
    rid = resp.headers["x-request-id"]
    assert rid != incoming and re.fullmatch(r"[0-9a-f]{32}", rid)
    assert _records_of(request_logs, rid)
    assert not any(incoming and incoming in r.getMessage() for r in request_logs.records)


async def test_query_strings_and_tokens_stay_out_of_the_access_log(env: Harness,
                                                                   request_logs: pytest.LogCaptureFixture) -> None:
    token = env.token()
    resp = await env.http.get(SCANS, params={"reference": "contract-of-jane-doe"},
                              headers={"Authorization": f"Bearer {token}", "X-Request-ID": "q-1"})
    assert resp.status_code == 200
    ours = [r for r in request_logs.records if r.name.startswith("server")]
    text = "\n".join(r.getMessage() for r in ours)
    assert "contract-of-jane-doe" not in text and token not in text
    assert token not in "\n".join(r.getMessage() for r in request_logs.records)
    assert _records_of(request_logs, "q-1")


# --------------------------------------------------------------------------- the real process on a real socket


@contextlib.contextmanager
def _facerec_serve(tmp_path: Path, **env_vars: str) -> Iterator[tuple[str, Path]]:
    """`facerec serve` in a subprocess on a free loopback port; yields its base URL and its log file."""
    server = ServeProcess(tmp_path / "data", env={**LOCAL_CPU, "FACEREC_ORT_INTRA_THREADS": "1",
                                                  "FACEREC_MODEL_REPOSITORY": str(PROJECT_ROOT / "model_repository"),
                                                  **env_vars}).start()
    try:
        yield server.url, server.log_path
    finally:
        server.stop()


async def _stream_until_answered(port: int, headers: str, total: int, piece: int) -> tuple[bytes, int]:
    """Send a chunked body of ``total`` bytes until the server answers; returns (status line, bytes sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.create_task(reader.readline())
    sent = 0
    chunk = f"{piece:x}\r\n".encode() + b"\0" * piece + b"\r\n"
    try:
        writer.write(headers.encode())
        while sent < total and not answer.done():
            writer.write(chunk)
            sent += piece
            await writer.drain()
            # drain() does not yield while the socket accepts data, so the answer could never be noticed.
            await asyncio.sleep(0)
        status = await asyncio.wait_for(answer, 30)
    except (ConnectionResetError, BrokenPipeError):
        status = await asyncio.wait_for(answer, 30)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return status, sent


async def test_real_server_banner_request_id_log_and_streamed_limit(tmp_path: Path) -> None:
    with _facerec_serve(tmp_path, FACEREC_MAX_REQUEST_BYTES="300000", FACEREC_MAX_FILE_BYTES="200000") as (url, log):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            live = await client.get("/health/live", headers={"X-Request-ID": "sock-live-1"})
            assert live.status_code == 200
            assert "server" not in live.headers  # no banner naming the server software or its version
            assert live.headers["x-request-id"] == "sock-live-1"
            assert_hardened(live)
            unrouted = await client.get("/nope", headers={"X-Request-ID": "sock-404"})
            assert unrouted.status_code == 404 and "server" not in unrouted.headers
            assert_hardened(unrouted)
            unauth = await client.get(SCANS, params={"reference": "jane-doe-contract"},
                                      headers={"X-Request-ID": "sock-401"})
            assert unauth.status_code == 401 and "server" not in unauth.headers
            assert not any("uvicorn" in v.lower() or "litestar" in v.lower() for v in unauth.headers.values())

            port = int(url.rsplit(":", 1)[1])
            total = 200 * 1024 * 1024
            head = (f"POST {COMPARE} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                    "Authorization: Bearer x.y.z\r\nContent-Type: multipart/form-data; boundary=b\r\n\r\n")
            # Unauthenticated: refused before the body is read at all.
            status, sent = await _stream_until_answered(port, head, total, 64 * 1024)
            assert status.startswith(b"HTTP/1.1 401"), status
            assert sent < 8 * 1024 * 1024, sent
            # Authenticated, far over the limit: 413 while the body is still streaming in.
            token = LocalIssuer.load_or_create(tmp_path / "data").mint("acme", "alice", ALL_ROLES, 600, "facerec")
            authed = head.replace("Bearer x.y.z", f"Bearer {token}")
            status, sent = await _stream_until_answered(port, authed, total, 64 * 1024)
            assert status.startswith(b"HTTP/1.1 413"), status
            assert sent < 16 * 1024 * 1024, sent  # stopped long before 200 MB
            assert (await client.get("/health/live")).status_code == 200  # still serving
    # Read once the process has exited (the block stopped it): every line it logged is in the file by then.
    text = log.read_text(errors="replace")
    access = [line for line in text.splitlines() if "server.access" in line]
    assert any("[sock-live-1]" in line and "/health/live" in line for line in access), text[-3000:]
    assert any("[sock-401]" in line and " 401 " in line for line in access), text[-3000:]
    assert token not in text
    assert "jane-doe-contract" not in text
    assert "uvicorn.access" not in text  # one access log, the app's (no query strings, no client addresses)
