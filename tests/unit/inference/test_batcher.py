"""Unit tests of the dynamic batcher against fake sync and async backends."""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from server import errors
from server.inference.batcher import Batcher
from server.metrics import Metrics

# Every await on the batcher goes through this bound, so a bug fails the test instead of hanging it. Nothing here
# takes more than ~0.5 s unloaded; 10 s holds at 10x slowdown on a loaded 2-core machine.
T = 10.0


class SyncBackend:
    """Plain-function backend: records batches and the thread it ran on, sleeps, returns item * 2."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[list[int]] = []
        self.threads: list[threading.Thread] = []

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.threads.append(threading.current_thread())
        if self.delay:
            time.sleep(self.delay)
        return [x * 2 for x in items]


class AsyncBackend:
    """Coroutine backend with a gate (to hold a batch in flight) and an injectable failure."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        self.fail_with: BaseException | None = None
        self.wrong_length = False
        self.running = 0
        self.max_running = 0

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.entered.set()
        try:
            await self.gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.fail_with is not None:
                exc, self.fail_with = self.fail_with, None
                raise exc
            if self.wrong_length:
                self.wrong_length = False
                return [x * 2 for x in items][:-1]
            return [x * 2 for x in items]
        finally:
            self.running -= 1

    def hold(self) -> None:
        self.gate.clear()
        self.entered.clear()

    def seen(self) -> list[int]:
        return [x for b in self.batches for x in b]


MakeBatcher = Callable[..., Batcher[int, int]]


@pytest.fixture
async def make() -> AsyncIterator[MakeBatcher]:
    created: list[Batcher[int, int]] = []

    def factory(fn: Any, **kw: Any) -> Batcher[int, int]:
        opts: dict[str, Any] = {"name": "fake", "max_batch_size": 16, "max_wait_ms": 10.0, "max_queue": 256}
        opts.update(kw)
        b: Batcher[int, int] = Batcher(fn, **opts)
        created.append(b)
        return b

    yield factory
    for b in created:
        await asyncio.wait_for(b.aclose(drain=False, drain_timeout_s=0.5), T)


async def within(aw: Awaitable[Any], limit: float = T) -> Any:
    return await asyncio.wait_for(aw, limit)


async def settle() -> None:
    # A few loop iterations: lets submit() tasks enqueue and the collector react.
    for _ in range(5):
        await asyncio.sleep(0)


# ---------------------------------------------------------------- batching


async def test_batches_form_under_concurrency(make: MakeBatcher) -> None:
    fn = SyncBackend(delay=0.005)
    b = make(fn, max_batch_size=16, max_wait_ms=10)
    await b.start()
    results = await within(asyncio.gather(*(b.submit(i) for i in range(64))))
    assert results == [i * 2 for i in range(64)]
    sizes = [len(x) for x in fn.batches]
    assert sum(sizes) == 64
    assert max(sizes) > 1
    assert max(sizes) <= 16
    assert statistics.mean(sizes) > 4
    assert b.stats.batches == len(sizes)
    assert b.stats.items == 64
    assert list(b.stats.last_batch_sizes) == sizes


async def test_max_batch_size_never_exceeded(make: MakeBatcher) -> None:
    fn = AsyncBackend(delay=0.001)
    b = make(fn, max_batch_size=7, max_wait_ms=2)

    async def client(i: int) -> int:
        await asyncio.sleep(random.random() * 0.02)
        return await b.submit(i)

    results = await within(asyncio.gather(*(client(i) for i in range(200))))
    assert results == [i * 2 for i in range(200)]
    assert max(len(x) for x in fn.batches) <= 7
    assert sorted(fn.seen()) == list(range(200))


async def test_outputs_routed_to_their_waiters(make: MakeBatcher) -> None:
    fn = AsyncBackend()
    b = make(fn, max_batch_size=8, max_wait_ms=3)

    async def client(i: int) -> None:
        if i >= 10:  # the first ten submit in the same loop tick, so at least one batch holds several
            await asyncio.sleep(random.random() * 0.01)
        out = await b.submit(i, source=random.choice(["http", "grpc"]))
        assert out == i * 2, (i, out)

    await within(asyncio.gather(*(client(i) for i in range(100))))
    assert any(len(x) > 1 for x in fn.batches)


async def test_max_wait_bounds_latency_at_low_load(make: MakeBatcher) -> None:
    fn = SyncBackend(delay=0.01)
    b = make(fn, max_batch_size=16, max_wait_ms=20)
    await b.start()
    t0 = time.perf_counter()
    assert await within(b.submit(21)) == 42
    elapsed = time.perf_counter() - t0
    # Alone, the item waits out the 20 ms window (nobody joins), then the 10 ms call. The upper bound only tells
    # "the window ended" from "it waited for company until the test's bound": 1 s holds at 10x slowdown.
    assert 0.020 <= elapsed < 1.0
    assert fn.batches == [[21]]


async def test_max_wait_zero_takes_what_is_queued(make: MakeBatcher) -> None:
    fn = AsyncBackend()
    b = make(fn, max_batch_size=16, max_wait_ms=0)
    await b.start()
    assert await within(b.submit(1)) == 2

    # No window: items that queue up while a batch is in flight all go into the next batch at once.
    fn.batches.clear()
    fn.hold()
    first = asyncio.create_task(b.submit(0))
    await within(fn.entered.wait())
    rest = [asyncio.create_task(b.submit(i)) for i in range(1, 6)]
    await settle()
    fn.gate.set()
    assert await within(asyncio.gather(first, *rest)) == [0, 2, 4, 6, 8, 10]
    assert fn.batches == [[0], [1, 2, 3, 4, 5]]


# ---------------------------------------------------------------- failures


async def test_facerec_error_reaches_every_waiter_and_next_batch_works(make: MakeBatcher) -> None:
    fn = AsyncBackend()
    b = make(fn, max_batch_size=8, max_wait_ms=20)
    fn.fail_with = errors.NoFace("no face in batch")
    results = await within(asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True))
    assert len(fn.batches) == 1
    assert all(isinstance(r, errors.NoFace) for r in results)
    assert {r.detail for r in results} == {"no face in batch"}
    assert await within(b.submit(5)) == 10
    assert b.stats.failed_batches == 1
    assert b.healthy


async def test_unexpected_error_becomes_inference_failed(
    make: MakeBatcher, caplog: pytest.LogCaptureFixture
) -> None:
    fn = AsyncBackend()
    m = Metrics()
    b = make(fn, max_wait_ms=20, metrics=m)
    fn.fail_with = RuntimeError("cuda secret internals")
    with caplog.at_level(logging.ERROR, logger="server.inference.batcher"):
        results = await within(asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True))
    for r in results:
        assert isinstance(r, errors.InferenceFailed)
        assert "secret" not in str(r)
        assert r.detail == "inference failed"
    # The real cause is logged, not leaked.
    assert any("cuda secret internals" in (rec.exc_text or "") for rec in caplog.records)
    assert m.value("facerec_inference_errors_total", model="fake") == 1
    assert await within(b.submit(4)) == 8


async def test_sync_fn_error_becomes_inference_failed(make: MakeBatcher) -> None:
    calls = 0

    def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("boom")
        return [x + 1 for x in items]

    b = make(flaky, max_wait_ms=1)
    with pytest.raises(errors.InferenceFailed):
        await within(b.submit(1))
    assert await within(b.submit(1)) == 2


async def test_wrong_length_output_fails_the_batch(make: MakeBatcher) -> None:
    fn = AsyncBackend()
    b = make(fn, max_wait_ms=20)
    fn.wrong_length = True
    results = await within(asyncio.gather(*(b.submit(i) for i in range(4)), return_exceptions=True))
    assert all(isinstance(r, errors.InferenceFailed) for r in results)
    assert await within(b.submit(3)) == 6


async def test_non_sequence_output_fails_the_batch(make: MakeBatcher) -> None:
    async def bad(items: list[int]) -> list[int]:
        return None  # type: ignore[return-value]

    b = make(bad, max_wait_ms=1)
    with pytest.raises(errors.InferenceFailed):
        await within(b.submit(1))


# ---------------------------------------------------------------- waiters that leave


async def test_cancelled_waiter_is_dropped_before_the_batch(make: MakeBatcher) -> None:
    fn = AsyncBackend()
    m = Metrics()
    b = make(fn, max_batch_size=16, max_wait_ms=0, metrics=m)
    fn.hold()
    first = asyncio.create_task(b.submit(100))
    await within(fn.entered.wait())
    a, gone, c = (asyncio.create_task(b.submit(i)) for i in (1, 2, 3))
    await settle()
    gone.cancel()
    await settle()
    fn.gate.set()
    assert await within(asyncio.gather(first, a, c)) == [200, 2, 6]
    assert gone.cancelled()
    assert 2 not in fn.seen()
    assert b.stats.dropped_cancelled == 1
    # Rows are counted per model; requests are counted once by the admission gate, not here.
    assert m.value("facerec_rows_dropped_total", model="fake", reason="cancelled") == 1
    assert m.value("facerec_requests_rejected_total", reason="cancelled") == 0


async def test_cancelled_during_batch_window_is_dropped(make: MakeBatcher) -> None:
    fn = AsyncBackend()
    # A long window: the few loop turns below must fall inside it even if the process is descheduled for a while.
    b = make(fn, max_batch_size=16, max_wait_ms=500)
    gone = asyncio.create_task(b.submit(7))
    stay = asyncio.create_task(b.submit(8))
    await settle()  # both taken into the forming batch, window still open
    gone.cancel()
    assert await within(stay) == 16
    assert fn.batches == [[8]]


async def test_client_timeout_mid_batch_does_not_break_others(make: MakeBatcher) -> None:
    fn = AsyncBackend(delay=0.05)
    b = make(fn, max_batch_size=16, max_wait_ms=5)
    impatient = asyncio.create_task(asyncio.wait_for(b.submit(1), 0.02))
    patient = asyncio.create_task(b.submit(2))
    with pytest.raises(TimeoutError):
        await within(impatient)
    assert await within(patient) == 4


async def test_expired_deadline_is_answered_and_never_sent(make: MakeBatcher) -> None:
    fn = AsyncBackend()
    m = Metrics()
    b = make(fn, max_batch_size=16, max_wait_ms=0, metrics=m)
    loop = asyncio.get_running_loop()

    # Already past: refused at submit.
    with pytest.raises(errors.DeadlineExceeded):
        await within(b.submit(1, deadline=loop.time() - 0.001))

    # Expires while the batcher is busy: answered at its deadline, not when the batch forms.
    fn.hold()
    first = asyncio.create_task(b.submit(100))
    await within(fn.entered.wait())
    # The batch in flight is held until after this answer, so the answer came from the deadline timer.
    with pytest.raises(errors.DeadlineExceeded):
        await within(b.submit(2, deadline=loop.time() + 0.03))
    ok = asyncio.create_task(b.submit(3, deadline=loop.time() + 5))
    await settle()
    fn.gate.set()
    assert await within(asyncio.gather(first, ok)) == [200, 6]
    assert 1 not in fn.seen()
    assert 2 not in fn.seen()
    assert b.stats.dropped_deadline == 2
    assert m.value("facerec_rows_dropped_total", model="fake", reason="deadline") == 2


async def test_deadline_inside_batch_window_drops_item(make: MakeBatcher) -> None:
    fn = AsyncBackend()
    b = make(fn, max_batch_size=16, max_wait_ms=60)
    loop = asyncio.get_running_loop()
    late = asyncio.create_task(b.submit(1, deadline=loop.time() + 0.01))
    fine = asyncio.create_task(b.submit(2))
    with pytest.raises(errors.DeadlineExceeded):
        await within(late)
    assert await within(fine) == 4
    assert fn.batches == [[2]]


# ---------------------------------------------------------------- the queue bound (a safety limit, not admission)


async def test_queue_bound_is_a_loud_failure_not_a_refusal(make: MakeBatcher,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    fn = AsyncBackend()
    m = Metrics()
    b = make(fn, max_batch_size=1, max_wait_ms=0, max_queue=4, metrics=m)
    fn.hold()
    running = asyncio.create_task(b.submit(0))
    await within(fn.entered.wait())
    queued = [asyncio.create_task(b.submit(i)) for i in range(1, 5)]
    await settle()
    assert b.queue_depth == 4
    assert m.value("facerec_queue_depth", model="fake") == 4
    with caplog.at_level(logging.ERROR, logger="server.inference.batcher"):
        for i in range(5, 7):
            # Admission keeps admitted work below the bound; reaching it is a bug, never a 429.
            with pytest.raises(errors.InferenceFailed):
                await within(b.submit(i))
    assert b.stats.queue_overflows == 2
    assert any("queue bound 4" in r.getMessage() for r in caplog.records)
    assert m.value("facerec_requests_rejected_total", reason="overloaded") == 0
    fn.gate.set()
    assert await within(asyncio.gather(running, *queued)) == [0, 2, 4, 6, 8]
    assert m.value("facerec_queue_depth", model="fake") == 0


async def test_departed_waiters_do_not_count_against_the_bound(make: MakeBatcher) -> None:
    fn = AsyncBackend()
    b = make(fn, max_batch_size=1, max_wait_ms=0, max_queue=2)
    fn.hold()
    running = asyncio.create_task(b.submit(0))
    await within(fn.entered.wait())
    gone = asyncio.create_task(b.submit(1))
    stays = asyncio.create_task(b.submit(2))
    await settle()
    gone.cancel()
    await settle()
    late = asyncio.create_task(b.submit(3))  # queue holds 2, but one of them has left
    await settle()
    fn.gate.set()
    assert await within(asyncio.gather(running, stays, late)) == [0, 4, 6]
    assert 1 not in fn.seen()
    assert b.stats.queue_overflows == 0


# ---------------------------------------------------------------- shutdown and health


async def test_aclose_drains_queued_items(make: MakeBatcher) -> None:
    fn = AsyncBackend()
    b = make(fn, max_batch_size=2, max_wait_ms=0)
    fn.hold()
    tasks = [asyncio.create_task(b.submit(i)) for i in range(7)]
    await within(fn.entered.wait())
    closing = asyncio.create_task(b.aclose(drain=True, drain_timeout_s=2))
    await settle()
    with pytest.raises(errors.Unavailable):
        await within(b.submit(99))
    fn.gate.set()
    await within(closing)
    assert await within(asyncio.gather(*tasks)) == [i * 2 for i in range(7)]
    assert not b.healthy


async def test_aclose_without_drain_fails_queued(make: MakeBatcher) -> None:
    fn = AsyncBackend()
    b = make(fn, max_batch_size=2, max_wait_ms=0)
    fn.hold()
    tasks = [asyncio.create_task(b.submit(i)) for i in range(5)]
    await within(fn.entered.wait())
    await settle()
    closing = asyncio.create_task(b.aclose(drain=False, drain_timeout_s=2))
    await settle()
    fn.gate.set()  # the batch already running is allowed to finish
    await within(closing)
    results = await within(asyncio.gather(*tasks, return_exceptions=True))
    assert results[:2] == [0, 2]
    for r in results[2:]:
        assert isinstance(r, errors.Unavailable)
        assert r.detail == "shutting down"
    assert fn.seen() == [0, 1]


async def test_aclose_timeout_answers_a_hung_batch(make: MakeBatcher) -> None:
    fn = AsyncBackend()
    b = make(fn, max_batch_size=2, max_wait_ms=0)
    fn.hold()  # never released: the backend hangs
    tasks = [asyncio.create_task(b.submit(i)) for i in range(5)]
    await within(fn.entered.wait())
    t0 = time.perf_counter()
    await within(b.aclose(drain=True, drain_timeout_s=0.1))
    # The hung batch is given up after the 0.1 s drain time, not after the test's bound (1 s holds at 10x).
    assert time.perf_counter() - t0 < 1.0
    results = await within(asyncio.gather(*tasks, return_exceptions=True))
    assert all(isinstance(r, errors.Unavailable) for r in results)


async def test_async_context_manager(make: MakeBatcher) -> None:
    fn = AsyncBackend()
    async with make(fn, max_wait_ms=1) as b:
        assert b.healthy
        assert await within(b.submit(3)) == 6
    assert not b.healthy


async def test_collector_crash_fails_pending_and_restarts(
    make: MakeBatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    fn = AsyncBackend()
    b = make(fn, max_batch_size=8, max_wait_ms=5)
    real_commit = b._commit
    crashes = 1

    def crashing_commit(*args: Any) -> Any:
        nonlocal crashes
        if crashes:
            crashes -= 1
            raise RuntimeError("collector bug")
        return real_commit(*args)

    monkeypatch.setattr(b, "_commit", crashing_commit)
    results = await within(asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True))
    assert all(isinstance(r, errors.Unavailable) for r in results)
    assert b.stats.collector_restarts == 1
    assert b.healthy
    assert await within(b.submit(4)) == 8


async def test_repeated_collector_crashes_mark_unhealthy(
    make: MakeBatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    fn = AsyncBackend()
    b = make(fn, max_wait_ms=0)

    def always_crash(*args: Any) -> Any:
        raise RuntimeError("collector bug")

    monkeypatch.setattr(b, "_commit", always_crash)
    for i in range(4):
        with pytest.raises(errors.Unavailable):
            await within(b.submit(i))
    await settle()
    assert not b.healthy
    with pytest.raises(errors.Unavailable):
        await within(b.submit(9))
    assert fn.batches == []


# ---------------------------------------------------------------- concurrency of batches


async def test_one_batch_at_a_time_by_default(make: MakeBatcher) -> None:
    fn = AsyncBackend(delay=0.005)
    b = make(fn, max_batch_size=4, max_wait_ms=1)
    await within(asyncio.gather(*(b.submit(i) for i in range(40))))
    assert fn.max_running == 1


async def test_max_concurrent_batches_overlaps_but_is_bounded(make: MakeBatcher) -> None:
    fn = AsyncBackend(delay=0.01)
    b = make(fn, max_batch_size=4, max_wait_ms=0, max_concurrent_batches=2)
    results = await within(asyncio.gather(*(b.submit(i) for i in range(40))))
    assert results == [i * 2 for i in range(40)]
    assert fn.max_running == 2
    assert max(len(x) for x in fn.batches) <= 4


# ---------------------------------------------------------------- threads and the loop


async def test_sync_fn_runs_off_the_event_loop(make: MakeBatcher) -> None:
    # fn blocks until the event loop releases it: on the loop's own thread that could never happen (it would wait
    # out its 5 s and report it was not released), so a released fn proves it ran elsewhere. No timing involved.
    release = threading.Event()
    entered = threading.Event()
    released: list[bool] = []
    threads: list[threading.Thread] = []

    def blocking(items: list[int]) -> list[int]:
        threads.append(threading.current_thread())
        entered.set()
        released.append(release.wait(5))
        return [x * 2 for x in items]

    b = make(blocking, max_wait_ms=0)
    task = asyncio.create_task(b.submit(5))
    assert await within(asyncio.to_thread(entered.wait, 5))
    release.set()  # the loop is free to run this while fn blocks
    assert await within(task) == 10
    assert released == [True]
    assert threads[0] is not threading.main_thread()
    assert threads[0].name.startswith("batcher-fake")


async def test_sync_fn_on_loop_when_asked(make: MakeBatcher) -> None:
    fn = SyncBackend()
    b = make(fn, max_wait_ms=0, run_in_thread=False)
    assert await within(b.submit(2)) == 4
    assert fn.threads == [threading.main_thread()]


def test_rejects_bad_arguments() -> None:
    fn = AsyncBackend()
    with pytest.raises(ValueError, match="run_in_thread"):
        Batcher(fn, name="x", max_batch_size=1, max_wait_ms=0, max_queue=1, run_in_thread=True)
    for kw in (
        {"max_batch_size": 0, "max_wait_ms": 0, "max_queue": 1},
        {"max_batch_size": 1, "max_wait_ms": -1, "max_queue": 1},
        {"max_batch_size": 1, "max_wait_ms": 0, "max_queue": 0},
    ):
        with pytest.raises(ValueError):
            Batcher(fn, name="x", **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- metrics


async def test_metrics_record_batches_and_mixed_sources(make: MakeBatcher) -> None:
    fn = AsyncBackend(delay=0.005)
    m = Metrics()
    b = make(fn, name="arcface", max_batch_size=8, max_wait_ms=20, metrics=m)
    await within(
        asyncio.gather(
            b.submit(1, source="http"),
            b.submit(2, source="grpc"),
            b.submit(3, source="http"),
        )
    )
    assert fn.batches == [[1, 2, 3]]
    size_sum, size_count = m.histogram_stats("facerec_batch_size", model="arcface")
    assert (size_sum, size_count) == (3, 1)
    q_sum, q_count = m.histogram_stats("facerec_queue_time_seconds", model="arcface")
    assert q_count == 3
    assert 0 < q_sum < 3 * 0.2
    i_sum, i_count = m.histogram_stats("facerec_inference_time_seconds", model="arcface")
    assert i_count == 1
    assert i_sum >= 0.004
    assert m.value("facerec_mixed_batches_total", model="arcface") == 1
    assert m.value("facerec_batch_items_total", model="arcface", source="http") == 2
    assert m.value("facerec_batch_items_total", model="arcface", source="grpc") == 1

    # A single-source batch is not mixed.
    await within(asyncio.gather(b.submit(4, source="http"), b.submit(5, source="http")))
    assert m.value("facerec_mixed_batches_total", model="arcface") == 1
    assert m.histogram_stats("facerec_batch_size", model="arcface") == (5, 2)
    assert m.value("facerec_queue_depth", model="arcface") == 0


# ---------------------------------------------------------------- items of several rows


async def _queue_behind_a_held_batch(b: Batcher[int, int], fn: AsyncBackend,
                                     items: list[tuple[int, int]]) -> tuple[asyncio.Task[int], list[asyncio.Task[int]]]:
    """Holds a first batch in fn, then queues ``(item, rows)`` in order behind it (so batches form only later)."""
    fn.hold()
    first = asyncio.create_task(b.submit(0))
    await within(fn.entered.wait())
    tasks = [asyncio.create_task(b.submit(i, rows=n)) for i, n in items]
    await settle()
    return first, tasks


async def test_batches_count_rows_and_never_split_an_item(make: MakeBatcher) -> None:
    fn = AsyncBackend()
    m = Metrics()
    b = make(fn, max_batch_size=4, max_wait_ms=0, metrics=m)
    first, tasks = await _queue_behind_a_held_batch(b, fn, [(1, 2), (2, 2), (3, 2), (4, 1)])
    assert b.queue_depth == 7  # rows, not items
    assert m.value("facerec_queue_depth", model="fake") == 7
    fn.gate.set()
    assert await within(asyncio.gather(first, *tasks)) == [0, 2, 4, 6, 8]
    # 2+2 rows fill a batch of 4; then 2+1: whole items, in order, each batch within 4 rows.
    assert fn.batches == [[0], [1, 2], [3, 4]]
    assert list(b.stats.last_batch_sizes) == [1, 4, 3]
    assert (b.stats.items, b.stats.waiters) == (8, 5)
    assert m.histogram_stats("facerec_batch_size", model="fake") == (8, 3)
    assert m.histogram_stats("facerec_queue_time_seconds", model="fake")[1] == 5  # one per item
    assert m.value("facerec_batch_items_total", model="fake", source="internal") == 8


async def test_an_item_larger_than_a_batch_runs_alone(make: MakeBatcher) -> None:
    fn = AsyncBackend()
    b = make(fn, max_batch_size=4, max_wait_ms=0)
    first, tasks = await _queue_behind_a_held_batch(b, fn, [(1, 1), (2, 6), (3, 1)])
    fn.gate.set()
    assert await within(asyncio.gather(first, *tasks)) == [0, 2, 4, 6]
    # The 6-row item does not fit after item 1, and nothing joins it: it has a batch of its own.
    assert fn.batches == [[0], [1], [2], [3]]
    assert list(b.stats.last_batch_sizes) == [1, 1, 6, 1]


async def test_a_smaller_later_item_does_not_overtake(make: MakeBatcher) -> None:
    fn = AsyncBackend()
    b = make(fn, max_batch_size=4, max_wait_ms=0)
    first, tasks = await _queue_behind_a_held_batch(b, fn, [(1, 3), (2, 3), (3, 1)])
    fn.gate.set()
    await within(asyncio.gather(first, *tasks))
    # Item 3 would fit beside item 1, but item 2 came first: arrival order is kept.
    assert fn.batches == [[0], [1], [2, 3]]


async def test_queue_bound_counts_rows(make: MakeBatcher) -> None:
    fn = AsyncBackend()
    b = make(fn, max_batch_size=1, max_wait_ms=0, max_queue=4)
    first, tasks = await _queue_behind_a_held_batch(b, fn, [(1, 3)])
    with pytest.raises(errors.InferenceFailed):
        await within(b.submit(2, rows=2))  # 3 + 2 rows > 4
    assert b.stats.queue_overflows == 1
    last = asyncio.create_task(b.submit(3, rows=1))  # 3 + 1 rows fit
    await settle()
    assert b.queue_depth == 4
    fn.gate.set()
    assert await within(asyncio.gather(first, *tasks, last)) == [0, 2, 6]


async def test_a_multi_row_waiter_that_left_is_dropped_unrun(make: MakeBatcher) -> None:
    fn = AsyncBackend()
    m = Metrics()
    b = make(fn, max_batch_size=8, max_wait_ms=0, metrics=m)
    first, (gone, stays) = await _queue_behind_a_held_batch(b, fn, [(1, 3), (2, 2)])
    gone.cancel()
    await settle()
    fn.gate.set()
    assert await within(asyncio.gather(first, stays)) == [0, 4]
    assert fn.seen() == [0, 2]
    assert b.stats.dropped_cancelled == 3  # its rows, not 1
    assert m.value("facerec_rows_dropped_total", model="fake", reason="cancelled") == 3
    assert m.value("facerec_queue_depth", model="fake") == 0


async def test_a_failed_batch_fails_every_multi_row_waiter(make: MakeBatcher) -> None:
    fn = AsyncBackend()
    # 3 + 2 rows fill the batch, so it forms when the second item arrives; the long window never closes it first.
    b = make(fn, max_batch_size=5, max_wait_ms=1000)
    await b.start()
    fn.fail_with = RuntimeError("boom")
    results = await within(asyncio.gather(b.submit(1, rows=3), b.submit(2, rows=2), return_exceptions=True))
    assert fn.batches == [[1, 2]]
    assert all(isinstance(r, errors.InferenceFailed) for r in results)
    assert await within(b.submit(3, rows=2)) == 6  # the batcher goes on


async def test_an_item_has_at_least_one_row(make: MakeBatcher) -> None:
    b = make(AsyncBackend())
    with pytest.raises(ValueError, match="row"):
        await within(b.submit(1, rows=0))
