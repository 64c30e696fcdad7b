"""The request context passed explicitly down the pipeline to the batchers: who asks and until when."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RequestContext:
    """``source`` labels the transport in the mixed-batch metrics ("http", "grpc"); ``deadline`` is an absolute
    ``loop.time()`` after which queued rows are dropped unrun (``None``: no deadline)."""

    source: str = "internal"
    deadline: float | None = None


# Work that no client waits on (the CLI, tools, tests running the pipeline on a backend): no deadline.
INTERNAL = RequestContext()
