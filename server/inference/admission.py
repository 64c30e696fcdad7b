"""Admission per request: a bounded number of compares in flight, each holding one permit from before its images
are decoded until it ends; a full gate refuses at once with ``Overloaded`` and a retry hint. (The decode memory
budget is admission's second step: see ``ScanService._memory`` and :meth:`Permit.refuse`.)"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from types import TracebackType

from server import errors
from server.inference.factory import on_accelerator
from server.metrics import Metrics
from server.settings import Settings
from server.topology import available_cores, worker_share

log = logging.getLogger(__name__)

# CPU: throughput is flat from 4 to 32 compares in flight at ~7 pairs/s per core (bench/README.md), so more in
# flight only adds waiting. 32 per core caps that wait at ~32 / 7 = ~4.5 s on any core count, far inside the 30 s
# default deadline, and leaves every concurrency the benchmarks drive (up to 32 on 2 cores) unrefused.
CPU_IN_FLIGHT_PER_CORE = 32
# GPU or Triton: batches of 16 in up to 4 overlapping calls per model need 32 pairs in flight to fill, and
# the host work of the next ones queues behind; 256 keeps the accelerator fed with room for bursts (the same
# order as the old per-model queue bound the Triton benchmark ran under, 256 rows).
ACCELERATOR_IN_FLIGHT = 256
# Floor of the retry hint: anything shorter invites a retry storm.
MIN_RETRY_AFTER_MS = 50
# The hint before any request has finished (nothing measured yet).
INITIAL_SERVICE_S = 1.0
# Weight of the newest request in the service-time average.
EMA_WEIGHT = 0.2


def auto_max_in_flight(settings: Settings) -> int:
    """Requests in flight when FACEREC_MAX_IN_FLIGHT is 0: 256 on an accelerator, 32 per core on CPU, for the
    node; with ``--workers N`` each worker admits its 1/N share (the kernel spreads connections over them)."""
    total = ACCELERATOR_IN_FLIGHT if on_accelerator(settings) else CPU_IN_FLIGHT_PER_CORE * available_cores()
    return worker_share(total, settings)


class AdmissionGate:
    """At most ``limit`` requests in flight; :meth:`admit` either hands out a permit or raises ``Overloaded``.

    Deciding never waits and costs no work, so a refusal is answered within a millisecond. The retry hint is the
    measured service time of recent requests (an exponential moving average, at least 50 ms): about how long the
    requests now in flight take to finish and free their permits.

    A permit may also be turned into a refusal before its request does any work (:meth:`Permit.refuse`): the
    decode memory budget, the second step of admission, did not grant the request's bytes in time.

    It also keeps the request-level counters: ``facerec_requests_rejected_total{reason}`` counts requests refused
    here (``overloaded``) or at the memory step (``memory``), and admitted requests that ended at their deadline
    (``deadline``) or because their client left (``cancelled``); ``facerec_requests_in_flight`` is the number of
    permits out (requests waiting for decode memory included).
    """

    def __init__(self, limit: int, *, metrics: Metrics | None = None) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self._metrics = metrics
        self._in_flight = 0
        self._service_s = INITIAL_SERVICE_S
        self.admitted = 0
        self.refused = 0
        self._set_gauge()

    @property
    def in_flight(self) -> int:
        """Permits out now."""
        return self._in_flight

    def admit(self) -> Permit:
        """A permit for one request (use it as ``with gate.admit():``), or ``Overloaded`` at once when full."""
        if self._in_flight >= self.limit:
            self.refused += 1
            self._count("overloaded")
            raise errors.Overloaded(retry_after_ms=self.retry_after_ms())
        self._in_flight += 1
        self.admitted += 1
        self._set_gauge()
        return Permit(self)

    def retry_after_ms(self) -> int:
        """How long a refused client should wait: the recent service time of one request (at least 50 ms)."""
        return max(MIN_RETRY_AFTER_MS, math.ceil(self._service_s * 1000))

    def _refuse_admitted(self, reason: str) -> None:
        self.admitted -= 1
        self.refused += 1
        self._count(reason)

    def _release(self, seconds: float, error: BaseException | None, refused: bool) -> None:
        self._in_flight -= 1
        self._set_gauge()
        if refused:  # it did no work: its wait says nothing about service time, and it was counted already
            return
        self._service_s = (1 - EMA_WEIGHT) * self._service_s + EMA_WEIGHT * seconds
        if isinstance(error, errors.DeadlineExceeded):
            self._count("deadline")
        elif isinstance(error, asyncio.CancelledError):
            self._count("cancelled")

    def _count(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.requests_rejected.labels(reason=reason).inc()

    def _set_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.requests_in_flight.set(self._in_flight)


class Permit:
    """One admitted request's place in the gate; leaving the ``with`` block gives it back (exactly once)."""

    __slots__ = ("_gate", "_refused", "_released", "_started")

    def __init__(self, gate: AdmissionGate) -> None:
        self._gate = gate
        self._started = time.perf_counter()
        self._released = False
        self._refused = False

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release(exc)

    def refuse(self, reason: str) -> None:
        """Count this request as refused with ``reason`` instead of admitted: it held its place only to wait for
        what admission also needs (decode memory) and did not get it, so it did no work. The caller then raises
        ``Overloaded``; the place goes back when the ``with`` block ends. Only before any work, at most once."""
        if self._refused or self._released:
            return
        self._refused = True
        self._gate._refuse_admitted(reason)

    def release(self, error: BaseException | None = None) -> None:
        """Give the permit back; ``error`` is how the request ended (for the deadline/cancelled counters)."""
        if self._released:
            return
        self._released = True
        self._gate._release(time.perf_counter() - self._started, error, self._refused)
