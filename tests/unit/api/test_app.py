"""App-level pieces that need no models: the retention loop and the request-id rules."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from server.api.http.middleware import request_id_of
from server.app import purge_forever
from server.errors import Unavailable


class FakeStore:
    def __init__(self, fail_first: bool = False) -> None:
        self.cutoffs: list[datetime] = []
        self.fail_first = fail_first
        self.three_rounds = asyncio.Event()

    async def purge_older_than(self, cutoff: datetime) -> int:
        self.cutoffs.append(cutoff)
        if len(self.cutoffs) >= 3:
            self.three_rounds.set()
        if self.fail_first and len(self.cutoffs) == 1:
            raise Unavailable("database unreachable")
        return 3


async def test_retention_purges_at_start_and_keeps_going_after_a_failure() -> None:
    store = FakeStore(fail_first=True)
    task = asyncio.create_task(purge_forever(store, days=30, interval_s=0.01))  # type: ignore[arg-type]
    await asyncio.wait_for(store.three_rounds.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    expected = datetime.now(UTC) - timedelta(days=30)
    assert all(abs((c - expected).total_seconds()) < 5 for c in store.cutoffs)


@pytest.mark.parametrize(("incoming", "kept"), [
    (b"abc-123._X", True), (b"a" * 128, True), (b"a" * 129, False), (b"has space", False),
    (b"<script>", False), (b"", False), (None, False),
])
def test_request_id_accepts_only_sane_values(incoming: bytes | None, kept: bool) -> None:
    headers = [(b"x-request-id", incoming)] if incoming is not None else []
    scope: dict[str, object] = {"headers": headers}
    rid = request_id_of(scope)
    assert (rid == (incoming or b"").decode()) is kept
    assert request_id_of(scope) == rid  # stable for the rest of the request
