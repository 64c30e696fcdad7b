"""Process logging: plain text or one JSON object per line (``FACEREC_LOG_FORMAT``), with request and trace ids."""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from server.tracing import trace_var

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
# Extra attributes a record may carry (``log.info(..., extra={...})``) that the JSON output keeps as members.
JSON_EXTRAS = ("method", "path", "route", "status", "duration_ms", "auth_failure", "scan_id", "company_id",
               "user_id", "model", "batch_size")

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


class ContextFilter(logging.Filter):
    """Adds ``request_id`` and ``trace_id`` to every record ("-" outside a request) so formats may print them."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        trace = trace_var.get()
        record.trace_id = trace.trace_id if trace is not None else "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp (UTC, ISO 8601), level, logger, message, request_id, trace_id, and
    the known extras (route, status, duration_ms, ...); an exception as ``exc``. Stdlib only."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "trace_id"):
            value = getattr(record, key, "-")
            if value and value != "-":
                out[key] = value
        for key in JSON_EXTRAS:
            if key in record.__dict__:
                out[key] = record.__dict__[key]
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(level: str, fmt: str) -> None:
    """Root logging for ``facerec serve``: every handler gets the context filter and the chosen format."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig()
    root.setLevel(level.upper())
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    for handler in root.handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
        handler.setFormatter(formatter)
