"""`wait_event`: a cancellation that comes as the event is set still ends the wait."""

from __future__ import annotations

import asyncio

import pytest

from connect.waiting import wait_event

pytestmark = pytest.mark.anyio


async def test_it_returns_whether_the_event_was_set_in_time() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 5) is True
    assert await wait_event(event, 0) is True  # already set
    event.clear()
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, None) is True


async def test_a_loop_cancelled_as_its_event_is_set_stops() -> None:
    # The shape of every wake-up loop here (the gateway's request pump, its
    # registry, the executor's ownership loop): with asyncio.wait_for on
    # Python 3.11 this cancellation is lost and the loop never ends.
    event = asyncio.Event()
    turns = 0

    async def loop() -> None:
        nonlocal turns
        while True:
            await wait_event(event, 5)
            event.clear()
            turns += 1

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    event.set()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert done == {task} and task.cancelled(), f"the loop went on ({turns} turns)"


async def test_a_timeout_and_a_cancellation_together_still_cancel() -> None:
    event = asyncio.Event()
    task = asyncio.create_task(wait_event(event, 0))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
