"""Runtime wiring that needs no models: the admission limit and the batchers' queue bound."""

from __future__ import annotations

import pytest

from server.inference.admission import ACCELERATOR_IN_FLIGHT, CPU_IN_FLIGHT_PER_CORE, available_cores
from server.inference.pipeline import MAX_ROWS_PER_IMAGE
from server.runtime import IMAGES_PER_REQUEST, max_in_flight, queue_bound
from server.settings import Settings


def test_negative_batch_size_is_refused() -> None:
    with pytest.raises(ValueError, match="FACEREC_MAX_BATCH_SIZE"):
        Settings(max_batch_size=-1)


def test_max_in_flight_auto_follows_the_device() -> None:
    assert max_in_flight(Settings(device="cpu")) == CPU_IN_FLIGHT_PER_CORE * available_cores()
    assert max_in_flight(Settings(backend="triton")) == ACCELERATOR_IN_FLIGHT
    assert max_in_flight(Settings(device="cpu", max_in_flight=3)) == 3


def test_negative_in_flight_is_refused() -> None:
    with pytest.raises(ValueError, match="FACEREC_MAX_IN_FLIGHT"):
        Settings(max_in_flight=-1)


def test_queue_bound_leaves_headroom_over_what_admitted_requests_can_queue() -> None:
    for limit in (1, 2, 64, 256):
        most_rows = limit * IMAGES_PER_REQUEST * MAX_ROWS_PER_IMAGE
        assert queue_bound(limit) >= 2 * most_rows
