"""The log of a real ``facerec serve`` under hostile input: client-controlled values cannot forge or hide lines,
every request (routed or not) gets its access line, and a client that leaves is a 499 at INFO, not a 500. Every
test runs against both log formats (``FACEREC_LOG_FORMAT`` text and json): the JSON members carry the escaped
values too, and every JSON line is one object.

Waits for the server to write a line are bounded by ``PATIENCE_S`` (60 s): a line is written within milliseconds
of the request ending, so the bound only trips when it is never written, even at a 10x slowdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import COMPARE, LOCAL_CPU, PAIR, SCANS, compare_parts, multipart, raw_connect, raw_request

from server.auth import ALL_ROLES, LocalIssuer
from server.settings import PROJECT_ROOT
from tooling.serve import ServeProcess
from tooling.wait import wait_until

PATIENCE_S = 60.0
BOUNDARY = "logboundary"
# Characters that end, rewrite or hide a line on a terminal or in a text log.
FORBIDDEN = ["\r", "\x00", "\x1b", "\u202e", "\u2028", "\u2029", "\u200b", "\x85", "\x0b", "\x0c"]
LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
FORGED = "2026-01-01 00:00:00,000 INFO server.service [x]: scan 1 deleted by user 'root' of company 'acme'"


# Lines `facerec serve` prints itself (not log records), in either format.
PRINTED = ("facerec:", "local token issuer", "  ", "and send")


@dataclass
class Server:
    proc: ServeProcess
    data_dir: Path
    log_format: str

    def mint(self, company: str = "acme", user: str = "alice") -> str:
        return LocalIssuer.load_or_create(self.data_dir).mint(company, user, ALL_ROLES, 600, "facerec")

    def log(self) -> str:
        return self.proc.log()

    def mark(self) -> int:
        """Where the log ends now: a test checks only what its own requests wrote."""
        return len(self.log())

    def wait_for(self, predicate: Callable[[str], bool], what: str, since: int = 0) -> str:
        """The log written after ``since``, once ``predicate`` holds for it."""
        try:
            asyncio.run(wait_until(lambda: predicate(self.log()[since:]), within_s=PATIENCE_S, interval_s=0.05,
                                   what=f"{what} in the log"))
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.log()[since:][-3000:]}") from None
        return self.log()[since:]

    def records(self, text: str) -> list[dict[str, Any]]:
        """The JSON records of ``text`` (json format)."""
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def access_lines(self, text: str, rid: str) -> list[str]:
        """The access lines of request ``rid``, as written."""
        if self.log_format == "text":
            return [line for line in text.splitlines() if "server.access" in line and f"[{rid}]" in line]
        return [line for line in text.splitlines() if line.startswith("{")
                and (r := json.loads(line))["logger"] == "server.access" and r.get("request_id") == rid]

    def level(self, line: str) -> str:
        """The level of a log line."""
        return line.split()[2] if self.log_format == "text" else str(json.loads(line)["level"])


@pytest.fixture(scope="module", params=["text", "json"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp(f"logs-{request.param}") / "data"
    proc = ServeProcess(data, env={**LOCAL_CPU, "FACEREC_ORT_INTRA_THREADS": "1", "FACEREC_LOG_FORMAT": request.param,
                                   "FACEREC_MODEL_REPOSITORY": str(PROJECT_ROOT / "model_repository")}).start()
    try:
        yield Server(proc, data, request.param)
    finally:
        proc.stop()


def _assert_clean(server: Server, text: str) -> None:
    for ch in FORBIDDEN:
        assert ch not in text, f"{ch!r} reached the log"
    for line in text.splitlines():
        if server.log_format == "json" and line.startswith("{"):
            record = json.loads(line)  # one whole object per line
            assert set(record) >= {"timestamp", "level", "logger", "message"}, line
            continue
        assert (server.log_format == "text" and LINE_START.match(line)) or line.startswith(PRINTED), (
            f"a line that does not start like a log record: {line!r}")
    assert not any(line.startswith(FORGED[:30]) for line in text.splitlines())
    assert not any(r["message"].startswith(FORGED[:30]) for r in server.records(text))


# --------------------------------------------------------------------------- forged lines


@pytest.mark.parametrize(("name", "path"), [
    ("crlf", "/v1/face-recognition/x%0D%0A" + FORGED.replace(" ", "%20").replace("'", "%27")),
    ("lf", "/v1/face-recognition/x%0A" + FORGED.replace(" ", "%20").replace("'", "%27")),
    ("nul-ansi", "/v1/face-recognition/x%00%1B%5B2J%1B%5B1A"),
    ("bidi-separators", "/v1/face-recognition/x%E2%80%AE%E2%80%A8%E2%80%A9%E2%80%8B%C2%85%0B%0C"),
    ("unrouted-crlf", "/nowhere%0D%0A" + FORGED.replace(" ", "%20").replace("'", "%27")),
])
def test_paths_cannot_forge_or_hide_log_lines(server: Server, name: str, path: str) -> None:
    rid = f"forge-{name}"
    since = server.mark()
    answer = raw_request(server.proc.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Request-ID: {rid}\r\n\r\n".encode())
    assert answer.status in (400, 401, 404), answer
    text = server.wait_for(lambda t: bool(server.access_lines(t, rid)), f"access line of {rid}", since)
    _assert_clean(server, text)
    (line,) = server.access_lines(text, rid)
    assert "%0D%0A" in line or "%0A" in line or "%00" in line or "%E2%80%AE" in line, line


def test_header_values_and_query_never_reach_the_log(server: Server) -> None:
    secret = "ref-\r\nINFO-forged-\x1b[31m"
    since = server.mark()
    with httpx.Client(base_url=server.proc.url, timeout=PATIENCE_S) as client:
        resp = client.get(SCANS, params={"reference": secret},
                          headers={"X-Request-ID": "hdr-1", "User-Agent": "ua\u2028x".encode(),
                                   "Referer": "x\u202ey".encode()})
        assert resp.status_code == 401
    text = server.wait_for(lambda t: bool(server.access_lines(t, "hdr-1")), "access line of hdr-1", since)
    _assert_clean(server, text)
    assert "ref-" not in text and "ua\\u2028" not in text and "x\\u202e" not in text  # not even escaped


def test_claims_in_the_audit_line_are_escaped(server: Server, faces_dir: Path) -> None:
    """A DELETE audit line names the user and company from the token: those cannot forge a line either."""
    token = server.mint(company="acme\r\n" + FORGED + "\u202e", user="bob\n" + FORGED + "\x1b[2J")
    auth = {"Authorization": f"Bearer {token}"}
    since = server.mark()
    with httpx.Client(base_url=server.proc.url, timeout=PATIENCE_S) as client:
        created = client.post(COMPARE, headers=auth, data={"channel": "WEB", "reference": "audit-1"},
                              files={"file1": ("a.jpg", (faces_dir / PAIR[0]).read_bytes()),
                                     "file2": ("b.jpg", (faces_dir / PAIR[1]).read_bytes())})
        assert created.status_code == 200, created.text
        scan_id = created.json()["id"]
        resp = client.delete(f"{SCANS}/{scan_id}", headers={**auth, "X-Request-ID": "audit-del"})
        assert resp.status_code == 204, resp.text
    text = server.wait_for(lambda t: bool(server.access_lines(t, "audit-del")), "access line of audit-del", since)
    _assert_clean(server, text)
    audit = [line for line in text.splitlines() if scan_id in line and "deleted" in line]
    assert len(audit) == 1, audit
    assert "bob" in audit[0] and "acme" in audit[0]


# --------------------------------------------------------------------------- every request gets its line


def test_unrouted_requests_get_their_access_line(server: Server) -> None:
    since = server.mark()
    with httpx.Client(base_url=server.proc.url, timeout=PATIENCE_S) as client:
        assert client.get("/no/such/route", headers={"X-Request-ID": "unrouted-404"}).status_code == 404
        assert client.put(COMPARE, headers={"X-Request-ID": "unrouted-405"}).status_code == 405
        assert client.get("/v1/face-recognition/a/b/c", headers={"X-Request-ID": "unrouted-404b"}).status_code \
            == 404
    rids = ("unrouted-404", "unrouted-405", "unrouted-404b")
    text = server.wait_for(lambda t: all(server.access_lines(t, r) for r in rids), "unrouted access lines", since)
    assert " 404 " in server.access_lines(text, "unrouted-404")[0]
    assert " 405 " in server.access_lines(text, "unrouted-405")[0]
    with httpx.Client(base_url=server.proc.url, timeout=PATIENCE_S) as client:
        metrics = client.get("/metrics").text
    assert re.search(r'facerec_http_request_duration_seconds_count\{[^}]*route="unmatched"[^}]*status="404"',
                     metrics), metrics[-2000:]


# --------------------------------------------------------------------------- clients that leave


def _leave_mid_upload(port: int, token: str, rid: str) -> None:
    head = (f"POST {COMPARE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nX-Request-ID: {rid}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 150000\r\n\r\n")
    with contextlib.closing(raw_connect(port)) as sock:
        sock.sendall(head.encode() + f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file1\"; "
                     f"filename=\"a.jpg\"\r\n\r\n".encode() + b"\xff" * 50_000)
        # Gone before the rest of the body: the handler is waiting for it.


def _leave_after_sending(port: int, token: str, rid: str, file1: bytes, file2: bytes) -> None:
    body = multipart(compare_parts(file1, file2, reference=b"leaver"), BOUNDARY)
    head = (f"POST {COMPARE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nX-Request-ID: {rid}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n")
    with contextlib.closing(raw_connect(port)) as sock:
        sock.sendall(head.encode() + body)
        sock.shutdown(socket.SHUT_WR)
        # Closed without reading: the compare is decoding or queued or running when the server notices.


def test_client_that_leaves_is_499_at_info_never_500(server: Server, faces_dir: Path) -> None:
    token = server.mint()
    file1, file2 = (faces_dir / PAIR[0]).read_bytes(), (faces_dir / PAIR[1]).read_bytes()
    rids = [f"leaver-{i}-{uuid.uuid4().hex[:6]}" for i in range(6)]
    since = server.mark()
    for i, rid in enumerate(rids):
        if i % 2:
            _leave_after_sending(server.proc.port, token, rid, file1, file2)
        else:
            _leave_mid_upload(server.proc.port, token, rid)
    text = server.wait_for(lambda t: all(server.access_lines(t, r) for r in rids), "access lines of the leavers",
                           since)
    for i, rid in enumerate(rids):
        (line,) = server.access_lines(text, rid)
        assert server.level(line) == "INFO", line
        if i % 2:  # the whole request was sent: a compare that won the race is a 200 nobody read, never a 500
            assert " 499 " in line or " 200 " in line, line
        else:  # left mid-upload: the request can never complete
            assert " 499 " in line, line
    assert " ERROR " not in text and '"level": "ERROR"' not in text and "Traceback" not in text, text[-3000:]
    with httpx.Client(base_url=server.proc.url, timeout=PATIENCE_S) as client:
        metrics = client.get("/metrics").text
    assert re.search(r'facerec_http_request_duration_seconds_count\{[^}]*status="499"[^}]*\} [1-9]', metrics)
    assert not re.search(r'facerec_http_request_duration_seconds_count\{[^}]*status="500"', metrics), metrics
