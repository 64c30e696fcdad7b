"""Dynamic batcher: gathers concurrent requests (items of one or more rows) into bounded batches for one call."""

from __future__ import annotations

import asyncio
import collections
import copy
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, TypeAlias, TypeVar, cast

from server import errors, tracing
from server.metrics import Metrics

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

BatchFn: TypeAlias = Callable[[list[In]], Awaitable[list[Out]]] | Callable[[list[In]], list[Out]]

# Consecutive collector crashes (without a good batch in between) before the batcher gives up.
_MAX_COLLECTOR_RESTARTS = 3


@dataclass(slots=True)
class BatcherStats:
    """Counters for tests and debugging (metrics are the operational view)."""

    batches: int = 0
    items: int = 0  # rows (an item of n rows counts n), like max_batch_size and last_batch_sizes
    waiters: int = 0  # submits that reached fn
    failed_batches: int = 0
    dropped_cancelled: int = 0  # rows, as the rows_dropped metric counts them
    dropped_deadline: int = 0
    queue_overflows: int = 0
    collector_restarts: int = 0
    last_batch_sizes: collections.deque[int] = field(default_factory=lambda: collections.deque(maxlen=256))


@dataclass(slots=True, eq=False)
class _Waiter(Generic[In, Out]):
    item: In
    rows: int
    source: str
    future: asyncio.Future[Out]
    enqueued: float
    deadline: float | None
    timer: asyncio.TimerHandle | None = None
    committed: bool = False


class Batcher(Generic[In, Out]):
    """Turns ``await submit(item, rows=n)`` calls into ``fn(list_of_items)`` calls of at most ``max_batch_size`` rows.

    An item carries ``rows`` rows (a pipeline stage's batch: both photos of a compare, the passes of one step) and
    is never split: a batch takes whole items, in arrival order, while their rows fit ``max_batch_size``. An item
    with more rows than that runs as a batch of its own (``fn`` sees it alone; BatchedRunner then cuts it into
    backend calls of at most ``max_batch_size`` rows). Batch size, the queue depth and the queue bound count rows;
    queue time is per item. ``fn`` returns one output per item, in order. A coroutine function is awaited on the
    loop (async backends such as a Triton client); a plain function runs in this batcher's own worker threads so
    inference never blocks the event loop. Every waiter is always answered: with its output, with the
    batch's error, or with ``DeadlineExceeded``/``Unavailable``.

    ``max_queue`` (rows) is a safety limit, not admission: requests are admitted (or refused with 429) before they reach
    any batcher, and the runtime sizes ``max_queue`` so admitted work cannot fill it. Reaching it anyway is a bug;
    the item fails loudly (logged, 500) instead of being refused as if the server were merely busy.
    """

    def __init__(
        self,
        fn: BatchFn[In, Out],
        *,
        name: str,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        metrics: Metrics | None = None,
        run_in_thread: bool | None = None,
        max_concurrent_batches: int = 1,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        if max_concurrent_batches < 1:
            raise ValueError("max_concurrent_batches must be >= 1")
        # Callable objects with an async __call__ count as coroutine functions too.
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)
        if run_in_thread is None:
            run_in_thread = not is_async
        if run_in_thread and is_async:
            raise ValueError("run_in_thread=True needs a plain function, not a coroutine function")
        self._fn = fn
        self._run_in_thread = run_in_thread
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.max_concurrent_batches = max_concurrent_batches
        self._metrics = metrics
        self.stats = BatcherStats()
        # The labelled series, looked up once: labels() on every submit and batch was a visible share of the
        # event loop's time per row (bench.host's profile).
        if metrics is not None:
            self._depth_gauge = metrics.queue_depth.labels(model=name)
            self._size_hist = metrics.batch_size.labels(model=name)
            self._queue_hist = metrics.queue_time.labels(model=name)
            self._infer_hist = metrics.inference_time.labels(model=name)
        self._source_counters: dict[str, Any] = {}

        self._queue: collections.deque[_Waiter[In, Out]] = collections.deque()
        self._queued_rows = 0  # rows of the waiters in _queue (the bound and the depth count rows)
        self._forming: list[_Waiter[In, Out]] = []
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(max_concurrent_batches)
        self._inflight: set[asyncio.Task[None]] = set()
        self._collector: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._closed = False
        self._broken = False
        self._crashes = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the collector task (idempotent)."""
        if self._collector is not None:
            return
        if self._closing:
            raise errors.Unavailable("shutting down")
        if self._run_in_thread and self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.max_concurrent_batches, thread_name_prefix=f"batcher-{self.name}"
            )
        self._collector = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"batcher-{self.name}"
        )

    async def aclose(self, *, drain: bool = True, drain_timeout_s: float = 10.0) -> None:
        """Stop accepting work and answer every waiter.

        ``drain=True`` runs what is queued (within ``drain_timeout_s`` seconds); ``drain=False`` fails queued
        waiters with ``Unavailable`` at once. Batches already running get the rest of that time; after
        that they are cancelled and their waiters get ``Unavailable``.
        """
        if self._closed:
            return
        self._closing = True
        self._wakeup.set()
        if not drain:
            self._fail_queued(errors.Unavailable("shutting down"))
        loop = asyncio.get_running_loop()
        end = loop.time() + drain_timeout_s
        if self._collector is not None:
            done, _ = await asyncio.wait({self._collector}, timeout=max(0.0, end - loop.time()))
            if not done:
                self._collector.cancel()
                await asyncio.gather(self._collector, return_exceptions=True)
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=max(0.0, end - loop.time()))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # Whatever is still queued (collector timed out or never started) is answered here.
        self._fail_queued(errors.Unavailable("shutting down"))
        self._fail_waiters(self._forming, errors.Unavailable("shutting down"))
        if self._executor is not None:
            # A running thread cannot be interrupted; its result is simply discarded.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._closed = True

    async def __aenter__(self) -> Batcher[In, Out]:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def healthy(self) -> bool:
        """True while the collector runs and the batcher accepts work."""
        return (
            self._collector is not None
            and not self._collector.done()
            and not self._closing
            and not self._broken
        )

    @property
    def queue_depth(self) -> int:
        """Rows queued for a batch (including those of waiters that left and are not yet swept)."""
        return self._queued_rows

    # ------------------------------------------------------------------ submit

    async def submit(self, item: In, *, rows: int = 1, source: str = "internal", deadline: float | None = None) -> Out:
        """Queue one item of ``rows`` rows and wait for its output.

        ``source`` labels the transport ("http", "grpc") in metrics; ``deadline`` is an absolute
        ``loop.time()`` after which the item is dropped if it has not reached a batch yet.

        Raises ``DeadlineExceeded``, ``Unavailable`` when closing, the batch's error (``InferenceFailed`` for
        anything unexpected), or ``InferenceFailed`` when the queue bound is hit (a bug: see the class docstring).
        """
        if rows < 1:
            raise ValueError("an item has at least one row")
        if self._closing or self._broken:
            raise errors.Unavailable("shutting down" if self._closing else "batcher unavailable")
        if self._collector is None:
            await self.start()
        loop = asyncio.get_running_loop()
        now = loop.time()
        if deadline is not None and deadline <= now:
            self._count_deadline(rows)
            raise errors.DeadlineExceeded()
        self._check_bound(rows)
        fut: asyncio.Future[Out] = loop.create_future()
        waiter = _Waiter(item=item, rows=rows, source=source, future=fut, enqueued=now, deadline=deadline)
        if deadline is not None:
            # Answer at the deadline even if the batcher is busy, rather than when the batch forms.
            waiter.timer = loop.call_at(deadline, self._expire, waiter)
        self._queue.append(waiter)
        self._queued_rows += rows
        self._set_depth()
        self._wakeup.set()
        try:
            return await fut
        finally:
            if waiter.timer is not None:
                waiter.timer.cancel()

    def _check_bound(self, rows: int) -> None:
        if self._queued_rows + rows <= self.max_queue:
            return
        self._sweep()  # waiters that already left do not count
        if self._queued_rows + rows > self.max_queue:
            self.stats.queue_overflows += 1
            logger.error("batcher %s: queue bound %d reached by admitted work; the admission limit and the rows "
                         "per request no longer fit this bound (a bug)", self.name, self.max_queue)
            raise errors.InferenceFailed("inference queue bound exceeded")

    # ------------------------------------------------------------------ collector

    async def _supervise(self) -> None:
        while True:
            try:
                await self._collect_loop()
                return
            except asyncio.CancelledError:
                self._fail_pending(errors.Unavailable("shutting down"))
                raise
            except Exception:
                logger.exception("batcher %s: collector crashed", self.name)
                self.stats.collector_restarts += 1
                self._crashes += 1
                # Nobody may hang on a dead collector: fail what it held, then restart or give up.
                self._fail_pending(errors.Unavailable("batcher restarted"))
                if self._crashes > _MAX_COLLECTOR_RESTARTS:
                    self._broken = True
                    logger.error("batcher %s: too many collector crashes, marking unhealthy", self.name)
                    return

    async def _collect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._closing and not self._queue:
                return
            # Take a slot before forming the batch, so items arriving while every slot is busy join
            # the next batch instead of a batch that is already formed and only waiting to run.
            await self._slots.acquire()
            try:
                batch = await self._collect(loop)
                batch = self._commit(batch, loop)
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            task = loop.create_task(self._run_batch(batch), name=f"batch-{self.name}")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> list[_Waiter[In, Out]]:
        batch: list[_Waiter[In, Out]] = []
        self._forming = batch
        while not batch:
            self._take(batch)
            if batch:
                break
            if self._closing:
                return batch
            self._wakeup.clear()
            await self._wakeup.wait()
        window_end = loop.time() + self.max_wait_s
        while not self._full(batch):
            self._take(batch)
            remaining = window_end - loop.time()
            if self._full(batch) or remaining <= 0 or self._closing:
                break
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                self._take(batch)
                break
        return batch

    def _full(self, batch: list[_Waiter[In, Out]]) -> bool:
        """No further item can join: the rows fill the batch, or the next queued item's rows do not fit (FIFO:
        a later, smaller item does not overtake it)."""
        rows = sum(w.rows for w in batch)
        if rows >= self.max_batch_size:
            return True
        return bool(self._queue) and bool(batch) and rows + self._queue[0].rows > self.max_batch_size

    def _take(self, batch: list[_Waiter[In, Out]]) -> None:
        now = asyncio.get_running_loop().time()
        rows = sum(w.rows for w in batch)
        while self._queue:
            waiter = self._queue[0]
            if not self._alive(waiter, now):
                self._queue.popleft()
                self._queued_rows -= waiter.rows
                continue
            # Whole items only; the first item of a batch always goes (one larger than a batch runs alone).
            if batch and rows + waiter.rows > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued_rows -= waiter.rows
            batch.append(waiter)
            rows += waiter.rows
        self._set_depth()

    def _commit(
        self, batch: list[_Waiter[In, Out]], loop: asyncio.AbstractEventLoop
    ) -> list[_Waiter[In, Out]]:
        # Last check before fn sees the items: waiters that left or expired while the batch formed.
        now = loop.time()
        kept = [w for w in batch if self._alive(w, now)]
        for w in kept:
            w.committed = True
            if w.timer is not None:
                w.timer.cancel()
        self._forming = []
        return kept

    def _alive(self, waiter: _Waiter[In, Out], now: float) -> bool:
        """False for a waiter that must not reach fn; each waiter is judged dead at most once."""
        fut = waiter.future
        if fut.cancelled():
            if waiter.deadline is not None and waiter.deadline <= now:
                # The request's own timeout (same deadline) cancelled it before this batcher's timer fired:
                # a deadline drop, not a client that left.
                self._count_deadline(waiter.rows)
                return False
            self.stats.dropped_cancelled += waiter.rows
            if self._metrics is not None:
                self._metrics.rows_dropped.labels(model=self.name, reason="cancelled").inc(waiter.rows)
            return False
        if fut.done():  # already answered by its deadline timer (and counted there)
            return False
        if waiter.deadline is not None and waiter.deadline <= now:
            fut.set_exception(errors.DeadlineExceeded())
            self._count_deadline(waiter.rows)
            return False
        return True

    def _expire(self, waiter: _Waiter[In, Out]) -> None:
        if waiter.committed or waiter.future.done():
            return
        waiter.future.set_exception(errors.DeadlineExceeded())
        self._count_deadline(waiter.rows)

    # ------------------------------------------------------------------ running a batch

    async def _run_batch(self, batch: list[_Waiter[In, Out]]) -> None:
        try:
            await self._run_batch_inner(batch)
        except asyncio.CancelledError:
            self._fail_waiters(batch, errors.Unavailable("shutting down"))
            raise
        except Exception:
            # Bookkeeping failed (fn errors are handled inside); nobody awaits this task, so log here.
            logger.exception("batcher %s: batch bookkeeping failed", self.name)
        finally:
            # Belt and braces: whatever path was taken, no waiter of this batch is left hanging.
            self._fail_waiters(batch, errors.InferenceFailed("inference failed"))
            self._slots.release()

    async def _run_batch_inner(self, batch: list[_Waiter[In, Out]]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._record_batch_start(batch, started)
        items = [w.item for w in batch]
        rows = sum(w.rows for w in batch)
        t0 = time.perf_counter()
        error: errors.FacerecError | None = None
        outputs: list[Out] = []
        try:
            outputs = await self._call(items, loop, rows)
        except errors.FacerecError as exc:
            error = exc
        except Exception:
            logger.exception("batcher %s: batch of %d items (%d rows) failed", self.name, len(items), rows)
            error = errors.InferenceFailed("inference failed")
        else:
            error = self._check_outputs(outputs, len(items))
        elapsed = time.perf_counter() - t0
        self.stats.batches += 1
        self.stats.items += rows
        self.stats.waiters += len(items)
        self.stats.last_batch_sizes.append(rows)
        if self._metrics is not None:
            self._infer_hist.observe(elapsed)
        if error is not None:
            self.stats.failed_batches += 1
            if self._metrics is not None:
                self._metrics.inference_errors.labels(model=self.name).inc()
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(_clone(error))
            return
        self._crashes = 0
        for w, out in zip(batch, outputs, strict=True):
            if not w.future.done():  # a client that left mid-batch just loses its result
                w.future.set_result(out)

    def _check_outputs(self, outputs: list[Out], n: int) -> errors.FacerecError | None:
        # fn is foreign code: a mis-sized or non-sequence result must fail the batch, not misroute.
        try:
            got = len(outputs)
        except TypeError:
            logger.error("batcher %s: fn returned a %s, not a sequence", self.name, type(outputs).__name__)
            return errors.InferenceFailed("inference failed")
        if got != n:
            logger.error("batcher %s: fn returned %d outputs for %d inputs", self.name, got, n)
            return errors.InferenceFailed("inference failed")
        return None

    @tracing.traced("infer", lambda self, items, _, rows: {"span.name": f"infer {self.name}", "batch.size": rows})
    async def _call(self, items: list[In], loop: asyncio.AbstractEventLoop, rows: int) -> list[Out]:
        if self._run_in_thread:
            sync_fn = cast(Callable[[list[In]], list[Out]], self._fn)
            return await loop.run_in_executor(self._executor, sync_fn, items)
        result = self._fn(items)
        if inspect.isawaitable(result):
            return await result
        return result

    # ------------------------------------------------------------------ helpers

    def _record_batch_start(self, batch: list[_Waiter[In, Out]], started: float) -> None:
        m = self._metrics
        if m is None:
            return
        self._size_hist.observe(sum(w.rows for w in batch))
        sources: collections.Counter[str] = collections.Counter()
        for w in batch:
            self._queue_hist.observe(max(0.0, started - w.enqueued))
            sources[w.source] += w.rows
        for source, n in sources.items():
            counter = self._source_counters.get(source)
            if counter is None:
                counter = self._source_counters[source] = m.batch_items.labels(model=self.name, source=source)
            counter.inc(n)
        if len(sources) > 1:
            m.mixed_batches.labels(model=self.name).inc()

    def _count_deadline(self, rows: int) -> None:
        self.stats.dropped_deadline += rows
        if self._metrics is not None:
            self._metrics.rows_dropped.labels(model=self.name, reason="deadline").inc(rows)

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._depth_gauge.set(self._queued_rows)

    def _sweep(self) -> None:
        """Drop queued waiters that already left, so departed clients do not count against capacity."""
        now = asyncio.get_running_loop().time()
        self._queue = collections.deque(w for w in self._queue if self._alive(w, now))
        self._queued_rows = sum(w.rows for w in self._queue)
        self._set_depth()

    def _fail_queued(self, error: errors.FacerecError) -> None:
        queued = list(self._queue)
        self._queue.clear()
        self._queued_rows = 0
        self._set_depth()
        self._fail_waiters(queued, error)

    def _fail_pending(self, error: errors.FacerecError) -> None:
        forming, self._forming = self._forming, []
        self._fail_waiters(forming, error)
        self._fail_queued(error)

    @staticmethod
    def _fail_waiters(waiters: list[_Waiter[In, Out]], error: errors.FacerecError) -> None:
        for w in waiters:
            if w.timer is not None:
                w.timer.cancel()
            if not w.future.done():
                w.future.set_exception(_clone(error))


def _clone(error: errors.FacerecError) -> errors.FacerecError:
    # One exception object raised in many tasks would share (and grow) one traceback; give each its own.
    try:
        return copy.copy(error)
    except (TypeError, AttributeError):
        return error
