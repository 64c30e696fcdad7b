"""uvicorn's httptools protocol with the limits a public listener needs: header size and count, time to receive a
request's headers and its body, and a lingering close so an early answer (401, 413) reaches clients that write
their whole body before reading.

uvicorn bounds none of these by itself: a 64 MB header block was read (at a cost quadratic in its size, inside
httptools) and answered, a half-sent request stayed open indefinitely, and closing a connection whose request body
was still arriving made the kernel reset it, so urllib and many Java clients saw "connection reset" instead of the
413. This module subclasses ``HttpToolsProtocol`` and relies on a few of its attributes (``cycle``, ``transport``,
``flow``); ``tests/integration/test_http_limits.py`` exercises each guard on a real ``facerec serve``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from server.api.http.middleware import API_CSP, SECURITY_HEADERS
from server.disconnect import CLOSED_STATUS_KEY
from server.settings import Settings

# Once a request has been answered, what is still arriving is read and discarded for at most this long (and at
# most LINGER_IDLE_S between two reads) before the connection is closed; nginx's lingering_time / _timeout.
LINGER_TOTAL_S = 30.0
LINGER_IDLE_S = 5.0
# Whoever wants to send this much after being answered is not waiting for the answer.
LINGER_MIN_BYTES = 16 * 1024 * 1024

access_log = logging.getLogger("server.access")
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one HTTP/1.1 connection may cost before the app sees its request."""

    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    linger_total_s: float = LINGER_TOTAL_S
    linger_idle_s: float = LINGER_IDLE_S
    linger_max_bytes: int = LINGER_MIN_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(max_header_bytes=settings.max_header_bytes, max_headers=settings.max_header_count,
                   header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s,
                   linger_max_bytes=max(LINGER_MIN_BYTES, 2 * settings.max_request_bytes))


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a request the limits refuse."""


def problem_bytes(status: int, code: str, title: str, detail: str) -> bytes:
    """A complete ``Connection: close`` problem+json response, with the hardening headers."""
    body = msgspec.json.encode({"type": f"https://facerec.dev/problems/{code}", "title": title, "status": status,
                                "code": code, "detail": detail})
    head = [f"HTTP/1.1 {status} {title}".encode()]
    head += [name + b": " + value for name, value in SECURITY_HEADERS]
    head.append(b"content-security-policy: " + API_CSP)
    head += [b"content-type: application/problem+json", b"content-length: " + str(len(body)).encode(),
             b"connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


_REFUSALS: dict[int, tuple[str, str]] = {
    400: ("bad_request", "Bad Request"),
    408: ("request_timeout", "Request Timeout"),
    431: ("headers_too_large", "Request Header Fields Too Large"),
}


class _LingeringTransport:
    """The transport uvicorn's code sees: ``close()`` while a request body is still arriving lingers instead.

    Everything else goes to the real transport.
    """

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpToolsProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def close(self) -> None:
        if self._protocol.request_incomplete():
            self._protocol.linger()
        else:
            self._transport.close()

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._protocol.lingering:  # the answer is complete; nothing more goes out
            self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` plus :class:`HttpLimits`; make a bound subclass with :func:`guarded_protocol`."""

    limits: ClassVar[HttpLimits] = HttpLimits()

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._raw: asyncio.Transport | None = None
        self._awaiting_head = True  # between requests or inside a header block
        self._head_bytes = 0
        self._heads_completed = 0  # header blocks parsed on this connection
        self._head_count = 0
        self._head_started = False  # a byte of the current request arrived
        self._message_open = False  # a request began and its body has not fully arrived
        self._refusal: tuple[int, str] | None = None
        self._keep_alive_wanted = False
        self._shutting_down = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self.lingering = False
        self._linger_bytes = 0
        self._linger_deadline = 0.0
        self._linger_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._raw = transport
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        # A connection that never completes a header block is closed: this also bounds one that sends nothing.
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._body_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self._discard(len(data))
            return
        was_awaiting, heads = self._awaiting_head, self._heads_completed
        super().data_received(data)
        if self.transport.is_closing():
            return
        # A read in which no header block ended, and after which one is still awaited, was all header bytes: it
        # counts in full. A read in which a block ended (a whole request, body included, often arrives in one read)
        # does not count. So the parser never holds more than the limit plus one read (<= 256 KiB) of a header
        # block: its cost grows with the square of a header's size.
        if was_awaiting and self._awaiting_head and self._heads_completed == heads:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(431, f"the request line and headers exceed {self.limits.max_header_bytes} bytes")

    def eof_received(self) -> None:
        if self.lingering:
            self._close_now()

    def request_incomplete(self) -> bool:
        """Whether a request began whose body has not fully arrived."""
        return self._message_open

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._message_open = True
        self._head_started = True
        self._head_count = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        if self._head_count > self.limits.max_headers:
            self._refusal = (431, f"more than {self.limits.max_headers} header fields")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        self._head_bytes = 0
        self._heads_completed += 1
        self._head_started = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timed_out)
        if self.cycle is not None:
            # Until the body has fully arrived, an answer closes the connection (uvicorn then sends
            # "Connection: close"): a client must not reuse a connection that still carries an unread body.
            self._keep_alive_wanted = self.cycle.keep_alive
            self.cycle.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if self.cycle is not None and self.cycle.response_complete:
            # Answered before its body arrived (401, 413, ...): what follows is waste; drain it and close.
            self.linger()
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._message_open = False
        self._awaiting_head = True
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_started and not self._shutting_down:
            cycle.keep_alive = self._keep_alive_wanted
        super().on_message_complete()

    def shutdown(self) -> None:
        self._shutting_down = True
        super().shutdown()

    # ------------------------------------------------------------------ refusals

    def send_400_response(self, msg: str) -> None:
        # httptools refused the request (or a limit did, from a callback): our problem+json and headers.
        status, detail = self._refusal or (400, "the request is not valid HTTP/1.1")
        self._refuse(status, detail)

    def _refuse(self, status: int, detail: str) -> None:
        code, title = _REFUSALS[status]
        # No request id or path: the request was never parsed far enough to have them (JSON logs get the status).
        access_log.info("%s %s %d (%s)", "-", "-", status, detail, extra={"status": status})
        if self._raw is None or self._raw.is_closing():
            return
        self._message_open = False
        self._raw.write(problem_bytes(status, code, title, detail))
        if status == 408:
            self._close_now()  # a client too slow to send its request gets no more time
        else:
            # The client may still be sending (a huge header): closing with its bytes unread would reset the
            # connection and could destroy the answer in flight, so drain within the linger bounds first.
            self.linger()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._awaiting_head or self._raw is None or self._raw.is_closing():
            return
        if self._head_started:
            self._refuse(408, f"the request headers did not arrive within {self.limits.header_timeout_s:g} s")
        else:  # an idle connection: nothing to answer
            self._close_now()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._message_open or self._raw is None or self._raw.is_closing() or self.lingering:
            return
        cycle = self.cycle
        detail = f"the request body did not arrive within {self.limits.body_timeout_s:g} s"
        if cycle is None or cycle.response_started:
            self._close_now()
            return
        # The app is still waiting for the body: it hears a disconnect (and its sends go nowhere), the access
        # log records the 408 the client gets.
        cycle.scope[CLOSED_STATUS_KEY] = 408  # type: ignore[literal-required]
        cycle.disconnected = True
        cycle.message_event.set()
        self._refuse(408, detail)

    # ------------------------------------------------------------------ lingering close

    def linger(self) -> None:
        """Half-close after the answer and discard what the client still sends, within the linger bounds."""
        if self.lingering or self._raw is None or self._raw.is_closing():
            return
        self.lingering = True
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None
        if self._raw.can_write_eof():
            self._raw.write_eof()  # FIN once the answer is flushed: the client reads it, then sees the end
        self._raw.resume_reading()
        self._linger_deadline = self.loop.time() + self.limits.linger_total_s
        self._arm_linger()

    def _arm_linger(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        at = min(self.loop.time() + self.limits.linger_idle_s, self._linger_deadline)
        self._linger_timer = self.loop.call_at(at, self._close_now)

    def _discard(self, n: int) -> None:
        self._linger_bytes += n
        if self._linger_bytes > self.limits.linger_max_bytes:
            self._close_now()
        else:
            self._arm_linger()

    def _close_now(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        self._message_open = False
        if self._raw is not None and not self._raw.is_closing():
            self._raw.close()


def guarded_protocol(limits: HttpLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` enforcing ``limits``."""
    return type("FacerecHttpProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})
