"""Unit tests of the admission gate: one permit per request, refusal at once, hints, request counters."""

from __future__ import annotations

import asyncio

import pytest

from server import errors
from server.inference import admission
from server.inference.admission import AdmissionGate
from server.metrics import Metrics


def test_admits_up_to_the_limit_then_refuses_at_once() -> None:
    m = Metrics()
    gate = AdmissionGate(2, metrics=m)
    first, second = gate.admit(), gate.admit()
    assert gate.in_flight == 2 and m.value("facerec_requests_in_flight") == 2
    for _ in range(3):
        with pytest.raises(errors.Overloaded) as info:
            gate.admit()
        assert info.value.retry_after_ms >= admission.MIN_RETRY_AFTER_MS
    assert gate.in_flight == 2 and gate.refused == 3
    assert m.value("facerec_requests_rejected_total", reason="overloaded") == 3
    first.release()
    third = gate.admit()  # a freed permit admits the next request
    second.release()
    third.release()
    assert gate.in_flight == 0 and gate.admitted == 3
    assert m.value("facerec_requests_in_flight") == 0


def test_a_permit_is_released_once_however_the_request_ends() -> None:
    gate = AdmissionGate(1)
    with pytest.raises(errors.NoFace), gate.admit() as permit:
        raise errors.NoFace("no face")
    permit.release()  # a second release is a no-op
    assert gate.in_flight == 0
    with gate.admit():
        assert gate.in_flight == 1
    assert gate.in_flight == 0


@pytest.mark.parametrize(("error", "reason"), [(errors.DeadlineExceeded(), "deadline"),
                                               (asyncio.CancelledError(), "cancelled")])
def test_requests_that_end_unfinished_are_counted_once(error: BaseException, reason: str) -> None:
    m = Metrics()
    gate = AdmissionGate(4, metrics=m)
    with pytest.raises(type(error)), gate.admit():
        raise error
    assert m.value("facerec_requests_rejected_total", reason=reason) == 1
    with gate.admit():
        pass  # a request that ends normally counts nowhere
    assert sum(m.value("facerec_requests_rejected_total", reason=r)
               for r in ("overloaded", "deadline", "cancelled")) == 1


def test_a_permit_refused_at_the_memory_step_counts_as_refused_not_admitted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode memory wait is admission's second step: a request that gets no memory did no work, so it is a
    refusal (reason ``memory``), not an admitted request, and its wait does not feed the retry hint."""
    clock = [100.0]
    monkeypatch.setattr(admission.time, "perf_counter", lambda: clock[0])
    m = Metrics()
    gate = AdmissionGate(2, metrics=m)
    with pytest.raises(errors.Overloaded), gate.admit() as permit:
        assert gate.in_flight == 1 and m.value("facerec_requests_in_flight") == 1  # waiting holds a place
        clock[0] += 15.0  # half a 30 s deadline spent waiting for memory
        permit.refuse("memory")
        permit.refuse("memory")  # once only
        raise errors.Overloaded("no memory", retry_after_ms=1000)
    assert (gate.in_flight, gate.admitted, gate.refused) == (0, 0, 1)
    assert m.value("facerec_requests_rejected_total", reason="memory") == 1
    assert m.value("facerec_requests_rejected_total", reason="overloaded") == 0
    assert m.value("facerec_requests_in_flight") == 0
    assert gate.retry_after_ms() == admission.INITIAL_SERVICE_S * 1000  # the 15 s wait is no service time


def test_retry_hint_follows_the_measured_service_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(admission.time, "perf_counter", lambda: clock[0])
    gate = AdmissionGate(1)
    assert gate.retry_after_ms() == admission.INITIAL_SERVICE_S * 1000  # nothing measured yet
    for _ in range(40):  # requests taking 3 s each pull the average to ~3 s
        with gate.admit():
            clock[0] += 3.0
    assert 2900 <= gate.retry_after_ms() <= 3000
    for _ in range(40):  # instant requests: the hint never drops under the floor
        with gate.admit():
            pass
    assert gate.retry_after_ms() == admission.MIN_RETRY_AFTER_MS


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        AdmissionGate(0)
