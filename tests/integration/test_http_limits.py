"""What a connection may cost before the app sees its request, on the real ``facerec serve`` over loopback sockets:
header size and count (431), the time to receive headers and body (408, then closed), requests the HTTP parser
refuses (400 with our headers), and early answers (401, 413) that reach clients which send their whole body first.

Waiting bounds: the server under test runs with a 1 s header timeout and a 2 s body timeout. Every wait for the
server to act is bounded by ``PATIENCE_S`` (60 s), far beyond those timeouts even at a 10x slowdown of this machine
(10-20 s); a test only fails on that bound when the server never acts at all. No test asserts that anything was fast.
"""

from __future__ import annotations

import contextlib
import json
import select
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from harness import (
    COMPARE,
    LOCAL_CPU,
    PAIR,
    SCANS,
    Answer,
    closed_soon,
    compare_parts,
    multipart,
    raw_connect,
    read_answer,
    send_until_answered,
)

from server.settings import PROJECT_ROOT
from tooling.serve import ServeProcess

PATIENCE_S = 60.0
HARDENING = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "x-frame-options": "DENY",
             "cache-control": "no-store", "content-security-policy": "default-src 'none'; frame-ancestors 'none'"}
MAX_REQUEST = 300_000
BOUNDARY = "limitboundary"


@dataclass
class Server:
    proc: ServeProcess
    token: str

    @property
    def port(self) -> int:
        return self.proc.port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("limits") / "data"
    proc = ServeProcess(data, env={**LOCAL_CPU, "FACEREC_ORT_INTRA_THREADS": "1",
                                   "FACEREC_MODEL_REPOSITORY": str(PROJECT_ROOT / "model_repository"),
                                   "FACEREC_MAX_REQUEST_BYTES": str(MAX_REQUEST), "FACEREC_MAX_FILE_BYTES": "200000",
                                   "FACEREC_HEADER_TIMEOUT_S": "1", "FACEREC_BODY_TIMEOUT_S": "2"}).start()
    try:
        yield Server(proc, proc.token("acme"))
    finally:
        proc.stop()


# --------------------------------------------------------------------------- answers read off the socket


def _assert_problem(answer: Answer, status: int, code: str) -> dict[str, object]:
    assert answer.status == status, answer
    for name, value in HARDENING.items():
        assert answer.headers.get(name) == value, (name, answer.headers)
    assert answer.headers.get("content-type", "").startswith("application/problem+json"), answer.headers
    body: dict[str, object] = json.loads(answer.body)
    assert body["status"] == status and body["code"] == code, body
    return body


def _assert_still_serving(server: Server) -> None:
    with httpx.Client(base_url=server.proc.url, timeout=PATIENCE_S) as client:
        assert client.get("/health/live").status_code == 200


# --------------------------------------------------------------------------- header size and count


def test_oversized_header_block_is_refused_with_431_long_before_its_end(server: Server) -> None:
    """A header that never ends: 431 once the block passes 32 KiB, not after the 32 MB this client would send."""
    with contextlib.closing(raw_connect(server.port)) as sock:
        sent = send_until_answered(sock, b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ", b"a" * 65536,
                                   limit=32 * 1024 * 1024)
        answer = read_answer(sock)
    _assert_problem(answer, 431, "headers_too_large")
    assert answer.closed
    # The limit plus what the kernel's socket buffers took before the answer was seen (loopback autotuning allows
    # a few MB at most), not the 32 MB an unbounded server reads before answering.
    assert sent < 16 * 1024 * 1024, sent
    _assert_still_serving(server)


def test_too_many_header_fields_is_431(server: Server) -> None:
    head = "GET /health/live HTTP/1.1\r\nHost: x\r\n" + "".join(f"X-H{i}: v\r\n" for i in range(500)) + "\r\n"
    with contextlib.closing(raw_connect(server.port)) as sock:
        sock.sendall(head.encode())
        answer = read_answer(sock)
    _assert_problem(answer, 431, "headers_too_large")
    assert answer.closed
    _assert_still_serving(server)


def test_headers_within_the_limits_still_pass(server: Server) -> None:
    with httpx.Client(base_url=server.proc.url, timeout=PATIENCE_S) as client:
        many = {f"x-h{i}": "v" for i in range(90)}
        assert client.get("/health/live", headers=many).status_code == 200
        # A 16 KiB token is refused by the verifier (401), not by the header limit.
        big = client.get(SCANS, headers={"Authorization": "Bearer " + "a" * (16 * 1024) + ".b.c"})
        assert big.status_code == 401, big.text
        assert client.get(SCANS, headers={"Authorization": f"Bearer {server.token}"}).status_code == 200


def test_a_whole_request_in_one_read_is_not_a_header_overflow(server: Server, faces_dir: Path) -> None:
    """Headers and a 240 KB body sent in one write (as a keep-alive client does) often arrive in one read: only
    header bytes count towards the header limit, on every request of the connection."""
    body = multipart(compare_parts((faces_dir / PAIR[0]).read_bytes(), (faces_dir / PAIR[1]).read_bytes(),
                                   reference=b"one-read"), BOUNDARY)
    head = (f"POST {COMPARE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.token}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n")
    assert len(body) > 2 * 32 * 1024
    with contextlib.closing(raw_connect(server.port)) as sock:
        for _ in range(3):
            sock.sendall(head.encode() + body)
            answer = read_answer(sock, wait_close=False)
            assert answer.status == 200, answer


# --------------------------------------------------------------------------- slow clients


def test_connection_that_sends_nothing_is_closed(server: Server) -> None:
    with contextlib.closing(raw_connect(server.port)) as sock:
        assert closed_soon(sock)


def test_half_sent_headers_are_answered_408_and_closed(server: Server) -> None:
    with contextlib.closing(raw_connect(server.port)) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        answer = read_answer(sock)
    _assert_problem(answer, 408, "request_timeout")
    assert answer.closed


def test_trickled_headers_do_not_keep_a_connection_open(server: Server) -> None:
    """One header byte every 0.1 s: each byte is progress, yet the header block must end within the timeout."""
    with contextlib.closing(raw_connect(server.port)) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        end = time.monotonic() + PATIENCE_S
        while time.monotonic() < end:
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                break
            try:
                sock.sendall(b"a")
            except (ConnectionResetError, BrokenPipeError):
                break
        else:
            raise AssertionError(f"connection still open after {PATIENCE_S:.0f} s of trickled headers")
        with contextlib.suppress(ConnectionResetError):
            data = sock.recv(65536)
            assert not data or data.startswith(b"HTTP/1.1 408 "), data[:100]


def test_half_sent_body_is_answered_408_and_closed(server: Server) -> None:
    head = (f"POST {COMPARE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.token}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 100000\r\n\r\n")
    with contextlib.closing(raw_connect(server.port)) as sock:
        sock.sendall(head.encode() + f"--{BOUNDARY}\r\n".encode())
        answer = read_answer(sock)
    _assert_problem(answer, 408, "request_timeout")
    assert answer.closed
    _assert_still_serving(server)


# --------------------------------------------------------------------------- requests the HTTP parser refuses


@pytest.mark.parametrize("request_bytes", [
    b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n",
    b"POST /v1/compare_face HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    b"GET /health/live HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /he alth HTTP/1.1\r\n\r\n",
], ids=["control-byte-in-header", "content-length-and-chunked", "bad-version", "space-in-target"])
def test_requests_refused_by_the_parser_carry_our_headers(server: Server, request_bytes: bytes) -> None:
    with contextlib.closing(raw_connect(server.port)) as sock:
        sock.sendall(request_bytes)
        answer = read_answer(sock)
    _assert_problem(answer, 400, "bad_request")
    assert "server" not in answer.headers
    assert answer.closed


# --------------------------------------------------------------------------- early answers every client can read


def _multipart_of(size: int) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file1\"; filename=\"a.jpg\"\r\n\r\n".encode()
            + b"\0" * size + f"\r\n--{BOUNDARY}--\r\n".encode())


@pytest.mark.parametrize("authorized", [True, False], ids=["413", "401"])
def test_early_answer_reaches_urllib(server: Server, authorized: bool) -> None:
    """urllib writes the whole 5 MB body (and asks for Connection: close) before it reads anything."""
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    if authorized:
        headers["Authorization"] = f"Bearer {server.token}"
    req = urllib.request.Request(server.proc.url + COMPARE, data=_multipart_of(5_000_000), headers=headers)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=PATIENCE_S)
    err = info.value
    assert err.code == (413 if authorized else 401)
    assert err.headers["content-type"].startswith("application/problem+json")
    body = json.loads(err.read())
    assert body["code"] == ("payload_too_large" if authorized else "unauthorized"), body
    _assert_still_serving(server)


@pytest.mark.parametrize("connection", ["close", "keep-alive"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_early_413_reaches_a_raw_client_that_sends_everything_first(server: Server, connection: str,
                                                                    framing: str) -> None:
    body = _multipart_of(5_000_000)
    head = (f"POST {COMPARE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.token}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nConnection: {connection}\r\n")
    if framing == "chunked":
        piece = 256 * 1024
        wire = b"".join(f"{len(body[i:i + piece]):x}\r\n".encode() + body[i:i + piece] + b"\r\n"
                        for i in range(0, len(body), piece)) + b"0\r\n\r\n"
        head += "Transfer-Encoding: chunked\r\n\r\n"
    else:
        wire = body
        head += f"Content-Length: {len(body)}\r\n\r\n"
    with contextlib.closing(raw_connect(server.port)) as sock:
        sock.sendall(head.encode() + wire)  # all of it, before reading a byte
        answer = read_answer(sock)
    _assert_problem(answer, 413, "payload_too_large")
    _assert_still_serving(server)


def test_early_answer_reaches_httpx(server: Server) -> None:
    with httpx.Client(base_url=server.proc.url, timeout=PATIENCE_S) as client:
        resp = client.post(COMPARE, content=_multipart_of(5_000_000),
                           headers={"Authorization": f"Bearer {server.token}",
                                    "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        assert resp.status_code == 413 and resp.json()["code"] == "payload_too_large", resp.text
        # The next request works (on this connection or a fresh one).
        assert client.get(f"{SCANS}/{uuid.uuid4()}",
                          headers={"Authorization": f"Bearer {server.token}"}).status_code == 404
