"""A process-wide memory budget for decoded pixels (``FACEREC_DECODE_MEMORY_MB``).

A compressed upload says little about what it costs to decode: a 130 KB solid-colour PNG holds 40 MP, which the
decoder turns into hundreds of MB of pixels. Before decoding, a compare estimates (from the image headers) the
bytes its decodes will need and takes them from the budget; once decoded it keeps only what the pipeline still
holds (the RGB arrays) and gives the rest back; after the pipeline everything goes back. A JPEG decoded at reduced
scale may be decoded again at full size during the pipeline (its face is small): the lease covers that worst case
from the start, so a re-decode never waits and is never refused. Waiters are served
first-come first-served, so a large request is not starved by small ones. A request that needs more than the whole
budget runs alone (it waits until nothing else holds any), decoding one image at a time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass

from server.metrics import Metrics

MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ImageCost:
    """What one image costs: the transient peak while decoding it, and the decoded array the pipeline keeps; for
    an image decoded at reduced scale, also the peak and array of a full-size re-decode (0: none possible)."""

    decode_peak: int
    kept: int
    redecode_peak: int = 0
    redecode_kept: int = 0


@dataclass(frozen=True, slots=True)
class DecodePlan:
    """How a compare decodes its images: all at once or one after the other, and the bytes to take for it."""

    together: bool
    need: int  # bytes to acquire before decoding (at most the budget's capacity)
    kept: int  # bytes to hold once decoded, until the pipeline is done with the pixels (re-decodes included)


def plan_decode(costs: list[ImageCost], capacity: int) -> DecodePlan:
    """Decode together when all peaks fit in the budget at once, else one at a time (each earlier image's array
    is kept while the next one decodes).

    Re-decodes at full size happen one at a time while the pipeline runs; at worst every image ends up with its
    larger array while the largest full decode peaks, so that much is held from the start (``need`` covers it
    too): a re-decode needs no bytes beyond the lease.
    """
    kept = sum(max(c.kept, c.redecode_kept) for c in costs) + max((c.redecode_peak for c in costs), default=0)
    together = sum(c.decode_peak for c in costs)
    if together <= capacity:
        need = max(together, kept)
        return DecodePlan(True, min(need, capacity), min(kept, capacity))
    held, need = 0, 0
    for c in costs:
        need = max(need, held + c.decode_peak)
        held += c.kept
    need = max(need, kept)
    return DecodePlan(False, min(need, capacity), min(kept, capacity))


class MemoryBudget:
    """A FIFO byte semaphore; ``acquire(n)`` waits until ``n`` bytes (capped at the capacity) are free."""

    def __init__(self, capacity: int, metrics: Metrics | None = None) -> None:
        if capacity < 1:
            raise ValueError("the budget needs a positive capacity")
        self.capacity = capacity
        self.available = capacity
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._metrics = metrics
        self._report()

    @property
    def waiting(self) -> int:
        """Requests waiting for bytes."""
        return sum(1 for _, fut in self._waiters if not fut.done())

    @property
    def in_use(self) -> int:
        return self.capacity - self.available

    async def acquire(self, n: int) -> Lease:
        """A lease on ``min(n, capacity)`` bytes, waiting (in arrival order) until they are free."""
        n = max(0, min(n, self.capacity))
        if not self._waiters and n <= self.available:
            self.available -= n
            self._report()
            return Lease(self, n)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        self._report()
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._give_back(n)  # granted in the same instant it was cancelled: not ours to keep
            else:
                with contextlib.suppress(ValueError):  # _wake may have dropped it already
                    self._waiters.remove(entry)
                self._wake()  # a large waiter leaving may let the ones behind it through
            self._report()
            raise
        return Lease(self, n)

    def _give_back(self, n: int) -> None:
        self.available += n
        self._wake()
        self._report()

    def _wake(self) -> None:
        while self._waiters:
            n, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if n > self.available:
                return  # first come, first served: nobody overtakes the head
            self._waiters.popleft()
            self.available -= n
            fut.set_result(None)

    def _report(self) -> None:
        if self._metrics is not None:
            self._metrics.decode_memory_bytes.set(self.in_use)
            self._metrics.decode_memory_waiting.set(self.waiting)


class Lease:
    """Bytes taken from a :class:`MemoryBudget`; shrink it as memory is freed, release it when done (idempotent)."""

    def __init__(self, budget: MemoryBudget, n: int) -> None:
        self._budget = budget
        self.size = n

    def shrink_to(self, n: int) -> None:
        """Keep only ``n`` bytes (never grows)."""
        n = max(0, n)
        if n < self.size:
            freed, self.size = self.size - n, n
            self._budget._give_back(freed)

    def release(self) -> None:
        self.shrink_to(0)
