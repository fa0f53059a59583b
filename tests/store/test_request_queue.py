"""Queued step requests on both engines: taken by one gateway at a time, settled once, announced."""

from __future__ import annotations

import asyncio

import pytest

from connect.store import (
    ANSWER_ENTRY_MAX,
    ANSWERED,
    LAPSED,
    REQUEST_ANSWERED,
    REQUEST_QUEUED,
    REQUEST_SETTLED,
    RETURNED,
    QueuedRequest,
    RequestQueueStats,
    Store,
    TakenRequest,
    read_answers,
)
from tests.store.conftest import Engine

pytestmark = pytest.mark.anyio

NOW = 1_000_000
HOLD = 30_000


def queued(request_id: str, slug: str = "app-fn", at: int = 1) -> QueuedRequest:
    return QueuedRequest(request_id, f"run-{request_id}", "app", slug, "step", b'{"p":1}', at)


async def test_a_request_is_taken_by_one_gateway_for_its_function_oldest_first(store: Store) -> None:
    await store.queue_request(queued("r2", at=2))
    await store.queue_request(queued("r1", at=1))
    await store.queue_request(queued("other", slug="app-other", at=0))
    assert await store.take_requests("gw-a", [], NOW, NOW + HOLD, 10) == []
    assert await store.take_requests("gw-a", ["app-fn"], NOW, NOW + HOLD, 1) == [queued("r1", at=1)]
    assert await store.take_requests("gw-a", ["app-fn"], NOW, NOW + HOLD, 10) == [queued("r2", at=2)]
    # Held: nobody else takes them while the hold lasts.
    assert await store.take_requests("gw-b", ["app-fn"], NOW + HOLD, NOW + 2 * HOLD, 10) == []
    # A renewed hold lasts; one that lapsed (its gateway gone) is taken by another.
    await store.hold_requests("gw-a", ["r1"], NOW + 3 * HOLD)
    assert await store.take_requests("gw-b", ["app-fn"], NOW + HOLD + 1, NOW + 2 * HOLD, 10) == [queued("r2", at=2)]


async def test_settling_answers_returns_or_lapses_and_only_the_holder_may(store: Store) -> None:
    for rid in ("r1", "r2", "r3"):
        await store.queue_request(queued(rid))
    assert len(await store.take_requests("gw-a", ["app-fn"], NOW, NOW + HOLD, 10)) == 3
    assert await store.settle_request("r1", "gw-b", ANSWERED) is False  # not its hold
    assert await store.settle_request("r1", "gw-a", ANSWERED) is True
    assert await store.settle_request("r1", "gw-a", ANSWERED) is False  # gone from the queue
    # Returned: any gateway may take it again at once.
    assert await store.settle_request("r2", "gw-a", RETURNED) is True
    assert await store.take_requests("gw-b", ["app-fn"], NOW, NOW + HOLD, 10) == [queued("r2")]
    # Lapsed: no gateway takes it; the executor sees it, and queuing it again clears it.
    assert await store.settle_request("r3", "gw-a", LAPSED) is True
    assert await store.request_lapsed("r3") is True
    assert await store.take_requests("gw-c", ["app-fn"], NOW, NOW + HOLD, 10) == []
    await store.queue_request(queued("r3"))
    assert await store.request_lapsed("r3") is False
    assert await store.take_requests("gw-c", ["app-fn"], NOW, NOW + HOLD, 10) == [queued("r3")]
    await store.dequeue_request("r3")
    assert await store.settle_request("r3", "gw-c", ANSWERED) is False
    with pytest.raises(ValueError, match="not 'done'"):
        await store.settle_request("r2", "gw-b", "done")


async def test_queuing_again_keeps_a_live_hold(store: Store) -> None:
    await store.queue_request(queued("r1"))
    assert len(await store.take_requests("gw-a", ["app-fn"], NOW, NOW + HOLD, 10)) == 1
    await store.queue_request(queued("r1"))  # a restarted executor dispatching the same id
    assert await store.take_requests("gw-b", ["app-fn"], NOW, NOW + HOLD, 10) == []
    assert await store.settle_request("r1", "gw-a", ANSWERED) is True


async def test_queue_and_settlements_are_announced(store: Store) -> None:
    queued_for: asyncio.Queue[str] = asyncio.Queue()
    settled: asyncio.Queue[str] = asyncio.Queue()
    await store.listen(REQUEST_QUEUED, queued_for.put_nowait)
    await store.listen(REQUEST_SETTLED, settled.put_nowait)
    await store.queue_request(queued("r1"))
    assert await asyncio.wait_for(queued_for.get(), 10) == "app-fn"
    await store.take_requests("gw-a", ["app-fn"], NOW, NOW + HOLD, 10)
    await store.settle_request("r1", "gw-a", RETURNED)
    assert await asyncio.wait_for(queued_for.get(), 10) == "app-fn"
    await store.take_requests("gw-a", ["app-fn"], NOW, NOW + HOLD, 10)
    await store.settle_request("r1", "gw-a", ANSWERED)
    assert await asyncio.wait_for(settled.get(), 10) == "r1"
    assert await store.settle_request("r1", "gw-a", ANSWERED) is False  # nothing settled: nothing announced
    await asyncio.sleep(0.2)
    assert settled.empty()


async def test_concurrent_gateways_never_take_the_same_request(engine: Engine) -> None:
    first, second = await engine.open(), await engine.open()
    try:
        for i in range(200):
            await first.queue_request(queued(f"r{i:03}", at=i))

        async def take_all(store: Store, gateway: str) -> list[str]:
            got: list[str] = []
            while batch := await store.take_requests(gateway, ["app-fn"], NOW, NOW + HOLD, 7):
                got.extend(q.request_id for q in batch)
            return got

        a, b = await asyncio.gather(take_all(first, "gw-a"), take_all(second, "gw-b"))
        assert set(a).isdisjoint(b) and len(a) + len(b) == 200
    finally:
        await first.close()
        await second.close()


async def test_storing_a_reply_answers_the_queued_request(store: Store) -> None:
    settled: asyncio.Queue[str] = asyncio.Queue()
    answered: asyncio.Queue[str] = asyncio.Queue()
    await store.listen(REQUEST_SETTLED, settled.put_nowait)
    await store.listen(REQUEST_ANSWERED, answered.put_nowait)
    for rid in ("r1", "r2", "big", "old"):
        await store.queue_request(queued(rid))
    assert await store.put_reply("old", b"first") is True
    assert list(read_answers(await asyncio.wait_for(answered.get(), 10))) == [("old", "Zmlyc3Q=")]
    await store.queue_request(queued("old"))  # queued again after its reply was stored
    assert len(await store.take_requests("gw-a", ["app-fn"], NOW, NOW + HOLD, 10)) == 4
    # A reply stored for it (by any gateway) takes it out of the queue, announced
    # with the reply once committed.
    assert await store.put_reply("r1", b"reply") is True
    assert list(read_answers(await asyncio.wait_for(answered.get(), 10))) == [("r1", "cmVwbHk=")]
    assert await store.get_reply("r1") == b"reply"
    # Too long to announce: announced by id, to be read back.
    assert await store.put_reply("big", b"x" * ANSWER_ENTRY_MAX) is True
    assert await asyncio.wait_for(settled.get(), 10) == "big"
    # Stored before: the stored reply is the answer, announced by id.
    assert await store.put_reply("old", b"second") is False
    assert await asyncio.wait_for(settled.get(), 10) == "old"
    assert answered.empty()
    assert await store.settle_request("r1", "gw-a", ANSWERED) is False  # already out of the queue
    await store.hold_requests("gw-a", ["r2"], NOW)  # r2's hold lapses: taken again, r1 not
    assert [q.request_id for q in await store.take_requests("gw-b", ["app-fn"], NOW + 1, NOW + HOLD, 10)] == ["r2"]
    # A reply for a request not queued announces nothing.
    assert await store.put_reply("r3", b"reply") is True
    await asyncio.sleep(0.2)
    assert settled.empty() and answered.empty()


async def test_a_request_is_taken_fresh_only_if_queued_fresh_and_never_taken(store: Store) -> None:
    def fresh(request_id: str) -> QueuedRequest:
        q = queued(request_id)
        return QueuedRequest(q.request_id, q.run_id, q.app_name, q.function_slug, q.step_id, q.payload, 1, True)

    await store.queue_request(fresh("r1"))
    await store.queue_request(queued("r2"))
    taken = await store.take_requests("gw-a", ["app-fn"], NOW, NOW + HOLD, 10)
    assert [(q.request_id, q.fresh) for q in taken] == [("r1", True), ("r2", False)]
    # Handed back (it may have reached a worker): no longer fresh.
    assert await store.settle_request("r1", "gw-a", RETURNED) is True
    assert [q.fresh for q in await store.take_requests("gw-b", ["app-fn"], NOW, NOW + HOLD, 10)] == [False]
    # Taken by a gateway that is gone, then taken again: not fresh either.
    await store.queue_request(fresh("r3"))
    await store.take_requests("gw-c", ["app-fn"], NOW, NOW + 1, 10)
    assert [q.fresh for q in await store.take_requests("gw-d", ["app-fn"], NOW + 2, NOW + HOLD, 10)] == [False]
    # Queued again by an executor while untaken: not fresh.
    await store.queue_request(fresh("r4"))
    await store.queue_request(fresh("r4"))
    assert [q.fresh for q in await store.take_requests("gw-a", ["app-fn"], NOW, NOW + HOLD, 10)] == [False]


async def test_requests_queued_together_are_each_queued_once(store: Store) -> None:
    announced: asyncio.Queue[str] = asyncio.Queue()
    await store.listen(REQUEST_QUEUED, announced.put_nowait)
    await asyncio.gather(
        *(store.queue_request(queued(f"r{i}", at=i)) for i in range(5)),
        store.queue_request(queued("r0", at=0)),  # the same id again, in the same batch
        store.queue_request(queued("o1", slug="app-other", at=9)),
    )
    taken = await store.take_requests("gw-a", ["app-fn", "app-other"], NOW, NOW + HOLD, 10)
    assert [q.request_id for q in taken] == ["r0", "r1", "r2", "r3", "r4", "o1"]
    slugs: set[str] = set()
    while slugs != {"app-fn", "app-other"}:
        slugs.add(await asyncio.wait_for(announced.get(), 10))


async def test_a_taken_request_shows_its_reply_and_hold_as_of_one_instant(store: Store) -> None:
    await store.queue_request(queued("r1"))
    assert len(await store.take_requests("gw-a", ["app-fn"], NOW, NOW + HOLD, 10)) == 1
    assert await store.taken_request("r1", "gw-a", NOW) == TakenRequest(None, True, False)
    assert await store.taken_request("r1", "gw-b", NOW) == TakenRequest(None, False, False)
    # A worker runs it: leased until the lease's end.
    await store.put_lease("r1", "lease-1", NOW + 5_000, "w1")
    assert await store.taken_request("r1", "gw-a", NOW) == TakenRequest(None, True, True)
    assert await store.taken_request("r1", "gw-a", NOW + 5_000) == TakenRequest(None, True, False)
    # Queued again while its reply is stored (which ended the lease): the reply answers it.
    await store.put_reply("r1", b"reply")
    await store.queue_request(queued("r1"))
    assert len(await store.take_requests("gw-b", ["app-fn"], NOW, NOW + HOLD, 10)) == 1
    assert await store.taken_request("r1", "gw-b", NOW) == TakenRequest(b"reply", True, False)
    assert await store.taken_request("gone", "gw-b", NOW) == TakenRequest(None, False, False)


async def test_queue_stats_count_waiting_held_and_lapsed_and_the_oldest_waiting(store: Store) -> None:
    empty = await store.request_queue_stats(NOW, 100)
    assert empty == RequestQueueStats(waiting=0, held=0, lapsed=0, oldest_waiting_ms=None, truncated=False)
    for rid, at in (("r1", 10), ("r2", 20), ("r3", 30), ("r4", 40)):
        await store.queue_request(queued(rid, at=at))
    assert await store.request_queue_stats(NOW, 100) == RequestQueueStats(4, 0, 0, 10, False)
    # r1 and r2 taken: held while their hold lasts, waiting again once it ran out.
    assert len(await store.take_requests("gw-a", ["app-fn"], NOW, NOW + HOLD, 2)) == 2
    assert await store.request_queue_stats(NOW, 100) == RequestQueueStats(2, 2, 0, 30, False)
    assert await store.request_queue_stats(NOW + HOLD + 1, 100) == RequestQueueStats(4, 0, 0, 10, False)
    # r1 lapsed (its worker lost), r2 answered (out of the queue).
    assert await store.settle_request("r1", "gw-a", LAPSED) is True
    assert await store.settle_request("r2", "gw-a", ANSWERED) is True
    assert await store.request_queue_stats(NOW, 100) == RequestQueueStats(2, 0, 1, 30, False)
    # At most `limit` rows are read: the counts are then lower bounds, and it says so.
    truncated = await store.request_queue_stats(NOW, 2)
    assert truncated.truncated and truncated.waiting + truncated.held + truncated.lapsed == 2
