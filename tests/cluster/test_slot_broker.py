"""The slot broker's bookkeeping, driven directly on an event loop (no Ray needed)."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import require

require("ray")
from kling_expand_plugin.integrations.ray import SlotBroker  # noqa: E402


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, timeout=10))


def test_slots_are_counted_n_per_task_and_never_over_the_total():
    async def scenario():
        broker = SlotBroker(4, lease_seconds=30)
        first = await broker.acquire(3)
        waiting = asyncio.create_task(broker.acquire(2))
        await asyncio.sleep(0.05)
        assert not waiting.done() and (await broker.stats())["in_use"] == 3
        await broker.release(first)
        await waiting
        return await broker.stats()

    stats = run(scenario())
    assert stats["in_use"] == 2 and stats["max_in_use"] == 3 and stats["granted"] == 2


def test_first_come_first_served_so_a_large_task_is_not_starved():
    async def scenario():
        broker = SlotBroker(2, lease_seconds=30)
        order = []
        held = await broker.acquire(1)

        async def take(name, n):
            lease = await broker.acquire(n)
            order.append(name)
            await asyncio.sleep(0.01)
            await broker.release(lease)

        big = asyncio.create_task(take("big", 2))
        await asyncio.sleep(0.01)
        small = asyncio.create_task(take("small", 1))  # would fit now, but asked second
        await asyncio.sleep(0.05)
        assert order == []
        await broker.release(held)
        await asyncio.gather(big, small)
        return order

    assert run(scenario()) == ["big", "small"]


def test_the_slots_of_a_holder_that_stopped_renewing_come_back():
    async def scenario():
        broker = SlotBroker(2, lease_seconds=0.3)
        renewed = await broker.acquire(1)
        await broker.acquire(1)  # its holder dies: never renewed, never released
        for _ in range(4):
            await asyncio.sleep(0.1)
            await broker.renew({renewed: 1})
        waited = asyncio.get_running_loop().time()
        await broker.acquire(1)  # gets the dead holder's slot
        return await broker.stats(), asyncio.get_running_loop().time() - waited

    stats, waited = run(scenario())
    assert stats["reclaimed"] == 1 and stats["in_use"] == 2 and stats["max_in_use"] == 2
    assert waited < 0.3


def test_a_renewal_the_broker_does_not_know_is_counted_again():
    async def scenario():
        broker = SlotBroker(3, lease_seconds=30)  # as after a restart: it knows no leases
        await broker.renew({"lease-from-before": 2})
        return await broker.stats()

    assert run(scenario())["in_use"] == 2


def test_a_task_larger_than_the_account_is_refused():
    with pytest.raises(ValueError, match="cannot fit"):
        run(SlotBroker(2).acquire(3))


def test_a_renewal_that_crosses_a_release_does_not_bring_the_lease_back():
    async def scenario():
        broker = SlotBroker(2, lease_seconds=30)
        lease = await broker.acquire(2)
        await broker.release(lease)
        await broker.renew({lease: 2})  # sent before the release, arrived after it
        await broker.acquire(2)
        return await broker.stats()

    stats = run(scenario())
    assert stats["in_use"] == 2 and stats["max_in_use"] == 2


def test_the_broker_budget_is_a_ceiling_reserved_until_settled():
    from kling_expand_plugin.batch.budget import BudgetReached

    async def scenario():
        broker = SlotBroker(4, lease_seconds=30, budget=5)
        first = await broker.reserve("a.png", 2)
        second = await broker.reserve("b.png", 2)
        with pytest.raises(BudgetReached):
            await broker.reserve("c.png", 2)  # 4 reserved + 2 > 5
        await broker.settle(first, 2.0, 2)
        await broker.release_units(second)  # that create never happened
        await broker.reserve("c.png", 2)
        return await broker.stats()

    stats = run(scenario())
    assert stats["units_spent"] == 2 and stats["units_reserved"] == 2
