"""W3C trace context for every request, and optional OpenTelemetry spans (a no-op without the ``otel`` extra).

Every HTTP request gets a trace: the caller's ``traceparent`` header is accepted (W3C Trace Context), or a new
trace starts. Its trace id goes into every log record of the request and back to the caller in the response's
``traceparent`` header, so a caller, a proxy and this server's logs can be joined on one id.

With ``FACEREC_TRACING=otlp`` (or ``console``) and the ``otel`` extra installed, the same trace is also recorded
as OpenTelemetry spans: one per request, and inside it ``decode``, ``store.*`` and one span per model batch
(``infer <model>``; a batch serves many requests, so it carries their number, not one parent). Call sites only
use :func:`span`, which costs one attribute lookup when tracing is off.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


@dataclass(frozen=True, slots=True)
class TraceContext:
    """One request's place in a trace: the trace id, this server's span id and the sampled flag."""

    trace_id: str
    span_id: str
    sampled: bool = False

    @property
    def traceparent(self) -> str:
        """The ``traceparent`` value naming this server's span (sent back to the caller and downstream)."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


trace_var: ContextVar[TraceContext | None] = ContextVar("facerec_trace", default=None)


def parse_traceparent(value: str | None) -> TraceContext | None:
    """The caller's trace context from a ``traceparent`` value; None when absent or invalid (W3C §3.2).

    Version ``ff`` and all-zero ids are invalid; a version above 00 may carry more fields, which are ignored.
    """
    if not value:
        return None
    m = _TRACEPARENT_RE.fullmatch(value.strip().lower())
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceContext(trace_id, span_id, bool(int(flags, 16) & 1))


def new_span_id() -> str:
    return secrets.token_hex(8)


def new_trace_id() -> str:
    return secrets.token_hex(16)


# --------------------------------------------------------------------------- OpenTelemetry (optional)


class _Otel:
    """The OpenTelemetry tracer and API module, once :func:`configure` installed a provider."""

    def __init__(self, tracer: Any, api: Any) -> None:
        self.tracer = tracer
        self.api = api


class _State:
    """Where the configured tracer lives (OpenTelemetry's provider is process-wide, like logging)."""

    otel: _Otel | None = None


_state = _State()


def configure(mode: str, *, provider: Any = None) -> None:
    """Record spans: ``mode`` is ``off``, ``console`` or ``otlp`` (``FACEREC_TRACING``).

    ``provider`` (an SDK TracerProvider) is used as given, e.g. by tests with an in-memory exporter; otherwise one
    is built with the exporter named by ``mode``, configured by the standard ``OTEL_*`` variables. Raises
    RuntimeError naming the extra when OpenTelemetry is not installed.
    """
    if mode == "off" and provider is None:
        _state.otel = None
        return
    try:
        from opentelemetry import trace as api
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as exc:
        raise RuntimeError(f"FACEREC_TRACING={mode} needs the otel extra: pip install 'facerec[otel]'") from exc
    if provider is None:
        provider = TracerProvider(resource=Resource.create({"service.name": "facerec"}))
        if mode == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError as exc:
                raise RuntimeError("FACEREC_TRACING=otlp needs the otel extra: pip install 'facerec[otel]'") from exc
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    _state.otel = _Otel(provider.get_tracer("facerec"), api)
    log.info("tracing: OpenTelemetry spans on (%s)", mode)


def enabled() -> bool:
    """Whether spans are being recorded."""
    return _state.otel is not None


@contextlib.contextmanager
def span(name: str, **attributes: str | int | float | bool) -> Iterator[None]:
    """A child span of the current one (a no-op unless OpenTelemetry is configured)."""
    otel = _state.otel
    if otel is None:
        yield
        return
    with otel.tracer.start_as_current_span(name, attributes=attributes):
        yield


@contextlib.contextmanager
def request_span(name: str, parent: TraceContext | None,
                 attributes: dict[str, str | int | float | bool] | None = None) -> Iterator[TraceContext]:
    """The server span of one request; sets :data:`trace_var` (for logs) and yields the context to send back.

    Without OpenTelemetry the trace id is the caller's (or a new one) and the span id a fresh one; with it, the
    recorded span's ids, parented on the caller's span so the trace continues across the hop.
    """
    otel = _state.otel
    if otel is None:
        ctx = TraceContext(parent.trace_id if parent else new_trace_id(), new_span_id(),
                           parent.sampled if parent else False)
        token = trace_var.set(ctx)
        try:
            yield ctx
        finally:
            trace_var.reset(token)
        return
    api = otel.api
    parent_ctx = None
    if parent is not None:
        remote = api.SpanContext(trace_id=int(parent.trace_id, 16), span_id=int(parent.span_id, 16),
                                 is_remote=True, trace_flags=api.TraceFlags(1 if parent.sampled else 0))
        parent_ctx = api.set_span_in_context(api.NonRecordingSpan(remote))
    with otel.tracer.start_as_current_span(name, context=parent_ctx, kind=api.SpanKind.SERVER,
                                           attributes=attributes) as current:
        sc = current.get_span_context()
        ctx = TraceContext(f"{sc.trace_id:032x}", f"{sc.span_id:016x}", bool(sc.trace_flags & 1))
        token = trace_var.set(ctx)
        try:
            yield ctx
        finally:
            trace_var.reset(token)


def set_attribute(key: str, value: str | int | float | bool) -> None:
    """Set an attribute on the current span (no-op without OpenTelemetry)."""
    otel = _state.otel
    if otel is not None:
        otel.api.get_current_span().set_attribute(key, value)


P = ParamSpec("P")
R = TypeVar("R")


def traced(name: str, attributes: Callable[..., dict[str, str | int | float | bool]] | None = None,
           ) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function (sync or async) to run inside a span ``name``; a no-op while tracing is off.

    ``attributes(*args, **kwargs)`` computes the span's attributes from the call (e.g. the model and batch size),
    and may name the span too with a ``"span.name"`` entry. Used as a one-line decorator so the call sites (the
    batcher, the decoder, the store) stay free of tracing code.
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        def start(args: tuple[Any, ...], kwargs: dict[str, Any]) -> contextlib.AbstractContextManager[Any]:
            otel = _state.otel
            if otel is None:
                return contextlib.nullcontext()
            attrs = dict(attributes(*args, **kwargs)) if attributes is not None else {}
            span_name = str(attrs.pop("span.name", name))
            manager: contextlib.AbstractContextManager[Any] = otel.tracer.start_as_current_span(
                span_name, attributes=attrs)
            return manager

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                with start(args, kwargs):
                    return await cast("Callable[P, Awaitable[Any]]", fn)(*args, **kwargs)

            return cast("Callable[P, R]", async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with start(args, kwargs):
                return fn(*args, **kwargs)

        return wrapper

    return decorate
