"""The decode memory budget: FIFO grants, capping at the capacity, shrinking, cancellation; and decode plans."""

from __future__ import annotations

import asyncio

import pytest

from server.inference.decode_budget import ImageCost, MemoryBudget, plan_decode
from server.metrics import Metrics


async def test_grants_in_arrival_order_and_nobody_overtakes_the_head() -> None:
    budget = MemoryBudget(100)
    first = await budget.acquire(80)
    big = asyncio.ensure_future(budget.acquire(60))
    small = asyncio.ensure_future(budget.acquire(10))  # would fit now, but the 60 came first
    await asyncio.sleep(0)
    assert not big.done() and not small.done() and budget.waiting == 2
    first.release()
    got_big = await big
    got_small = await small
    assert (got_big.size, got_small.size, budget.available) == (60, 10, 30)
    got_big.release()
    got_small.release()
    assert budget.available == 100


async def test_a_request_larger_than_the_capacity_gets_all_of_it_once_free() -> None:
    budget = MemoryBudget(100)
    held = await budget.acquire(1)
    huge = asyncio.ensure_future(budget.acquire(10_000))
    await asyncio.sleep(0)
    assert not huge.done()
    held.release()
    lease = await huge
    assert lease.size == 100 and budget.available == 0
    lease.release()


async def test_shrink_gives_back_and_release_is_idempotent() -> None:
    metrics = Metrics()
    budget = MemoryBudget(100, metrics)
    lease = await budget.acquire(70)
    assert metrics.value("facerec_decode_memory_bytes") == 70
    lease.shrink_to(20)
    lease.shrink_to(50)  # never grows
    assert (lease.size, budget.available) == (20, 80)
    lease.release()
    lease.release()
    assert budget.available == 100 and metrics.value("facerec_decode_memory_bytes") == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_lets_the_next_through() -> None:
    budget = MemoryBudget(100)
    held = await budget.acquire(50)
    blocked = asyncio.ensure_future(budget.acquire(90))
    behind = asyncio.ensure_future(budget.acquire(40))
    await asyncio.sleep(0)
    blocked.cancel()
    lease = await asyncio.wait_for(behind, 5)  # event-driven: granted as soon as the head leaves
    assert lease.size == 40 and budget.waiting == 0
    with pytest.raises(asyncio.CancelledError):
        await blocked
    held.release()
    lease.release()
    assert budget.available == 100


async def test_timeouts_while_waiting_do_not_leak() -> None:
    budget = MemoryBudget(10)
    held = await budget.acquire(10)
    for _ in range(5):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0):
                await budget.acquire(5)
    held.release()
    assert budget.available == 10 and budget.waiting == 0


def test_plan_decodes_together_when_both_peaks_fit() -> None:
    plan = plan_decode([ImageCost(40, 10), ImageCost(30, 5)], capacity=100)
    assert (plan.together, plan.need, plan.kept) == (True, 70, 15)


def test_plan_decodes_one_after_the_other_otherwise() -> None:
    # First image: peak 60; second: its peak 60 on top of the first's kept 20.
    plan = plan_decode([ImageCost(60, 20), ImageCost(60, 20)], capacity=100)
    assert (plan.together, plan.need, plan.kept) == (False, 80, 40)
    capped = plan_decode([ImageCost(600, 200), ImageCost(600, 200)], capacity=100)
    assert (capped.together, capped.need, capped.kept) == (False, 100, 100)


def test_the_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        MemoryBudget(0)


def test_plan_holds_a_full_size_redecode_from_the_start() -> None:
    # Image 1 decoded at 1/2: peak 10, array 2; at full size peak 40, array 8. Image 2 at full size: 30 / 6.
    costs = [ImageCost(10, 2, 40, 8), ImageCost(30, 6)]
    plan = plan_decode(costs, capacity=100)
    # Worst case while the pipeline runs: both full arrays (8 + 6) and the re-decode's peak (40) on top.
    assert (plan.together, plan.need, plan.kept) == (True, 54, 54)
    assert plan.need >= 2 + 6 + 40  # the reduced array is still held while its full size decodes
    # Without the re-decode the same images need only their decode peaks.
    assert plan_decode([ImageCost(10, 2), ImageCost(30, 6)], capacity=100).need == 40


def test_plan_with_redecodes_one_after_the_other() -> None:
    costs = [ImageCost(60, 20, 90, 40), ImageCost(60, 20, 90, 40)]
    plan = plan_decode(costs, capacity=200)
    assert (plan.together, plan.need, plan.kept) == (True, 170, 170)  # 40 + 40 + 90 > 120 together
    tight = plan_decode(costs, capacity=110)
    assert (tight.together, tight.need, tight.kept) == (False, 110, 110)  # capped: the request runs alone
