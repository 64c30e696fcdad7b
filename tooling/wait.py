"""The one bounded wait of the tests and tools, for conditions that have no event to await."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

# Polling interval: short against the waits it serves (a request reaching a queue, a server coming up).
INTERVAL_S = 0.01


async def wait_until(predicate: Callable[[], bool | Awaitable[bool]], *, within_s: float, what: str,
                     interval_s: float = INTERVAL_S) -> None:
    """Poll ``predicate`` (plain or async) until it is true; fail naming ``what`` after ``within_s`` seconds.

    Test-side only (the product never sleep-polls). Callers choose ``within_s`` far above the expected wait, so
    that a loaded machine (10x slower) still passes and only a real hang fails.
    """
    end = time.monotonic() + within_s
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {within_s:.1f} s waiting for {what}")
        await asyncio.sleep(interval_s)


def wait_for(predicate: Callable[[], bool], *, within_s: float, what: str, interval_s: float = INTERVAL_S) -> None:
    """:func:`wait_until` for synchronous callers (a plain predicate, a blocking sleep between polls)."""
    end = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {within_s:.1f} s waiting for {what}")
        time.sleep(interval_s)
