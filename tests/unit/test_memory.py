"""The malloc arena cap and trim work on this platform (glibc on Linux) and never raise elsewhere."""

from __future__ import annotations

import asyncio
import sys

import pytest

from server import memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc controls exist on Linux only")
def test_arena_limit_and_trim_are_applied_on_linux() -> None:
    assert memory.limit_arenas() is True
    assert memory.map_large_blocks() is True
    big = [bytearray(1 << 20) for _ in range(64)]  # 64 MiB freed below: something to give back
    del big
    assert isinstance(memory.trim(), bool)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the trim task only runs where glibc exists")
async def test_trim_task_runs_and_cancels() -> None:
    task = asyncio.create_task(memory.trim_forever(interval_s=0.01))
    await asyncio.sleep(0.05)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
