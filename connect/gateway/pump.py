"""A gateway serving executors in other processes: it takes the requests they
queued in the store (`connect.dispatch.queued`) for the functions its ready
workers serve, and forwards each through its own dispatcher.

Per request: take it (held for `HOLD` seconds, renewed every third of that
while it is forwarded), `dispatch` it as the in-process executor would (a
stored reply or a live lease is honoured, the reply is stored before the
worker is acknowledged), then settle it: `ANSWERED` once the reply is
stored, `LAPSED` if the worker was lost, `RETURNED` if no worker here could
take it after all (another gateway may). A fresh request (`QueuedRequest.fresh`:
never dispatched before) is dispatched as fresh, without looking for a stored
reply or lease, and its answer needs no settling: storing the reply took it
out of the queue. A request taken again (not fresh: an executor that took its
run over queued it again) is looked up first (`Store.taken_request`): a stored
reply answers it, one no longer held here is not forwarded (its reply was
stored and consumed meanwhile, which took it out of the queue, or another
gateway has it), and one no worker holds a live lease of is dispatched as
fresh (one look at the store in all). A gateway that dies holding
requests loses them to the others once its holds lapse.

It takes no more than `max_in_flight` requests at once, and none for a
function whose workers here are all busy: taking is woken by a request
queued (`REQUEST_QUEUED`), by a worker ready, by capacity appearing (a slot
released) when the last take was short of it (a function with no room, or
`max_in_flight` reached: otherwise that take left nothing behind that the
slot could serve, and a look per finished step would cost the store a
statement each), and by a slow sweep every `SWEEP_INTERVAL` seconds for
notifications lost (which also forgets the instances the store found full,
see `connect.gateway.dispatcher`).

A draining gateway `stop_taking`: it takes nothing more and hands back
(`RETURNED`) what it took and has not sent to a worker yet; `finish` waits
for the rest to be answered (on any gateway, or through `/flush`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Final

from connect.dispatch import AtCapacity, NoWorker, StepRequest, WorkerStoppedResponding
from connect.gateway.dispatcher import GatewayDispatcher
from connect.store.base import ANSWERED, LAPSED, REQUEST_QUEUED, RETURNED, QueuedRequest, Store
from connect.waiting import wait_event

log = logging.getLogger("connect.gateway.pump")

#: Seconds a taken request stays this gateway's without a renewal.
HOLD: Final = 30.0
#: Seconds between looks at the queue when nothing announced anything.
SWEEP_INTERVAL: Final = 5.0
#: Requests forwarded at once, at most.
MAX_IN_FLIGHT: Final = 1024
#: How a forward ends when the request is out of the queue already (answered, or taken elsewhere).
_GONE: Final = "gone"


class RequestPump:
    """Moves queued requests to this gateway's workers; `run` until cancelled."""

    def __init__(
        self,
        store: Store,
        dispatcher: GatewayDispatcher,
        gateway_id: str,
        *,
        clock: Callable[[], float] = time.time,
        hold: float = HOLD,
        sweep_interval: float = SWEEP_INTERVAL,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        if hold <= 0 or sweep_interval <= 0 or max_in_flight < 1:
            raise ValueError("hold and sweep_interval must be positive and max_in_flight at least 1")
        self._store = store
        self._dispatcher = dispatcher
        self.gateway_id = gateway_id
        self._clock = clock
        self._hold = hold
        self._sweep_interval = sweep_interval
        self._max_in_flight = max_in_flight
        self._wake = asyncio.Event()
        self._forwarding: dict[str, asyncio.Task[str]] = {}
        self._settling: set[asyncio.Future[None]] = set()
        #: Functions no worker here could take a request of, until capacity may be back.
        self._blocked: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._taking = True
        self._idle = asyncio.Event()
        self._idle.set()
        #: Whether the last take left something out for want of room here (see the module doc).
        self._short = True
        dispatcher.add_capacity_listener(self._capacity_appeared)
        dispatcher.add_connection_listener(self.poke)

    @property
    def in_flight(self) -> int:
        return len(self._forwarding)

    @property
    def forwarding(self) -> list[str]:
        """The requests taken here and being forwarded now."""
        return list(self._forwarding)

    def poke(self) -> None:
        """Capacity may have appeared (a worker ready, a slot released): look again."""
        self._wake.set()

    def _capacity_appeared(self) -> None:
        if self._short:
            self._wake.set()

    async def run(self) -> None:
        await self._store.listen(REQUEST_QUEUED, lambda _slug: self._wake.set())
        renew_at = self._clock() + self._hold / 3
        sweep_at = self._clock() + self._sweep_interval
        try:
            while True:
                await wait_event(self._wake, self._sweep_interval)
                self._wake.clear()
                if self._clock() >= sweep_at:  # also when busy: no notification says "full elsewhere" ended
                    sweep_at = self._clock() + self._sweep_interval
                    self._dispatcher.recheck_capacity()
                try:
                    if self._clock() >= renew_at and self._forwarding:
                        await self._store.hold_requests(self.gateway_id, list(self._forwarding), self._until())
                    renew_at = self._clock() + self._hold / 3
                    await self._take()
                except Exception:
                    log.warning("cannot reach the request queue; retrying", exc_info=True)
        finally:
            await self._stop()

    def _until(self) -> int:
        return int((self._clock() + self._hold) * 1000)

    def stop_taking(self) -> int:
        """Take no more requests, and hand back those taken and not sent to a
        worker yet (their forwards are cancelled; each settles `RETURNED`).
        Returns how many were handed back."""
        self._taking = False
        for waiting in self._blocked.values():
            waiting.cancel()
        unsent = [task for rid, task in self._forwarding.items() if self._dispatcher.leases.get(rid) is None]
        for task in unsent:
            task.cancel()
        return len(unsent)

    async def finish(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the requests being forwarded to end; True if they all did."""
        return await wait_event(self._idle, timeout)

    async def _take(self) -> None:
        if not self._taking:
            return
        room = self._max_in_flight - len(self._forwarding)
        router = self._dispatcher.router
        served = [key for key in router.with_room() if key not in self._blocked]
        self._short = room <= 0 or len(served) < router.function_count()
        if room <= 0 or not served:
            return
        now_ms = int(self._clock() * 1000)
        taken = await self._store.take_requests(
            self.gateway_id, sorted({slug for _, slug in served}), now_ms, self._until(), room
        )
        for request in taken:
            rid = request.request_id
            if rid in self._forwarding:
                # Its hold lapsed while it was forwarded here (a renewal was
                # late) and this gateway took it again: the forward under way
                # goes on, and the take only renewed the hold.
                log.warning("request %s: taken again while forwarded here; its hold was renewed late", rid)
                continue
            task = asyncio.create_task(self._forward(request), name=f"forward:{rid}")
            self._forwarding[rid] = task
            # Settled from a callback: a task cancelled before it ran never runs its `finally`.
            task.add_done_callback(functools.partial(self._forwarded, rid))
            self._idle.clear()
        if len(taken) == room:
            self._short = True
            self._wake.set()  # maybe more waiting: look again once these are under way

    async def _forward(self, queued: QueuedRequest) -> str:
        """Dispatch one taken request; returns how to settle it."""
        rid = queued.request_id
        try:
            fresh = queued.fresh
            if not fresh:
                # Queued again (by an executor that took the run over, say), or
                # first dispatched elsewhere: its reply may be stored, or even
                # consumed already, which also took it out of the queue. Only a
                # request still held here, with no reply, is dispatched; with no
                # live lease either (no worker has it), as a fresh one.
                taken = await self._store.taken_request(rid, self.gateway_id, int(self._clock() * 1000))
                if taken.reply is not None:
                    return ANSWERED
                if not taken.held:
                    log.debug("request %s: answered and consumed since it was queued again; not forwarded", rid)
                    return _GONE
                fresh = not taken.leased
            request = StepRequest(
                rid,
                queued.run_id,
                queued.app_name,
                queued.function_slug,
                queued.step_id,
                queued.payload,
                fresh=fresh,
            )
            await self._dispatcher.dispatch(request)
            # Dispatched fresh, its answer was stored after it was taken, and
            # storing it took it out of the queue (`Store.put_reply`): nothing to
            # settle. Otherwise `dispatch` may have answered from a stored reply.
            return _GONE if fresh else ANSWERED
        except (NoWorker, AtCapacity):
            self._block((queued.app_name, queued.function_slug))
        except WorkerStoppedResponding:
            return LAPSED
        except Exception:
            log.exception("request %s: forwarding failed; returning it to the queue", rid)
        return RETURNED

    def _forwarded(self, rid: str, task: asyncio.Task[str]) -> None:
        if self._forwarding.get(rid) is task:
            del self._forwarding[rid]
        # Cancelled (stopping, or handed back): another gateway may take it.
        outcome = RETURNED if task.cancelled() or task.exception() is not None else task.result()
        log.debug("request %s: settling it %s", rid, outcome)
        settle = asyncio.ensure_future(self._settle(rid, outcome))
        self._settling.add(settle)
        settle.add_done_callback(self._settled)
        if self._short:
            self._wake.set()  # a slot is free here, and the last take wanted one

    async def _settle(self, rid: str, outcome: str) -> None:
        if outcome == _GONE:
            return
        try:
            await self._store.settle_request(rid, self.gateway_id, outcome)
        except Exception:
            # Its hold lapses, and then any gateway takes it again.
            log.warning("request %s: cannot settle it %s", rid, outcome, exc_info=True)

    def _settled(self, task: asyncio.Future[None]) -> None:
        self._settling.discard(task)
        if not self._forwarding and not self._settling:
            self._idle.set()

    def _block(self, key: tuple[str, str]) -> None:
        if key in self._blocked or not self._taking:
            return

        def unblock(_: asyncio.Task[None]) -> None:
            del self._blocked[key]
            self._wake.set()

        task = asyncio.create_task(self._dispatcher.wait_for_worker(*key, timeout=self._sweep_interval))
        task.add_done_callback(unblock)
        self._blocked[key] = task

    async def _stop(self) -> None:
        """Cancel what is under way; what was taken is settled (handed back) all the same."""
        tasks = [*self._forwarding.values(), *self._blocked.values()]
        log.debug("pump stopping: %d forwards, %d settling", len(self._forwarding), len(self._settling))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # the tasks' done callbacks start their settlements
        while self._settling:
            await asyncio.gather(*list(self._settling), return_exceptions=True)
