"""The gateway's implementation of the port (`connect.dispatch.Port`), for
an executor in the same process: route, lease, forward, await.

Durability rules held here:

* a reply is stored (`put_reply`, first stored wins) before anyone is told
  about it, and before the worker gets WORKER_REPLY_ACK; or, for a request
  whose caller `takes_over`, the caller's own commit makes it durable (its
  memo) before the worker gets WORKER_REPLY_ACK, and a reply the caller did
  not commit is stored here first;
* a lease is written to the store before the reply can be, so a restarted
  process that finds a live lease waits for that worker instead of running
  the step a second time (storing the reply ends the stored lease);
* a lease lapses at its `expires_at`, with no grace after it; then `dispatch`
  raises `WorkerStoppedResponding` and the executor dispatches the same
  request id again, so a reply that the lost worker still delivers answers it
  (first stored wins), and a worker that gets the request again recognises it;
* every capacity slot taken is released on every path out of `dispatch`.

Among other gateways (`shared_with`, the store they all use; see
`connect.roles.gateway`):

* a reply for a request held elsewhere is stored, then announced
  (`REPLY_STORED`); the gateway holding it hears that
  (`reply_stored_elsewhere`) and answers from the stored reply at once;
* a lease is re-read from the store before it is declared lapsed: the
  worker may extend it through another gateway (an extension rotates the
  lease id, so a stored id this gateway does not know means just that);
* a wait cancelled (the gateway stops) leaves the stored lease alone: the
  worker may still run the request, and the gateway that takes it next
  waits for it rather than sending it again;
* the lease of a request for an instance with `max_worker_concurrency` is
  stored before the request is sent, and only while the instance holds
  fewer unexpired leases than its limit in the store (`put_lease_within`);
  refused, the instance is full here until a lease of it may have ended (a
  slot released here, a reply stored anywhere, the pump's sweep).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from connect.dispatch import (
    CheckpointDecided,
    CheckpointReceiver,
    ExecutorMessage,
    NoWorker,
    ReplySettled,
    StepReply,
    StepRequest,
    WorkerStoppedResponding,
)
from connect.dispatch.flow import Acknowledged, Forwarded, LeaseLapsed, RequestFlow, State
from connect.gateway.capacity import InstanceCapacity
from connect.gateway.checkpoint_intake import CheckpointIntake
from connect.gateway.connection import Connection
from connect.gateway.inflight import InFlight, ReplyDone, reply_from_bytes
from connect.gateway.reply_intake import ReplyIntake, ReplyStore
from connect.gateway.routing import Router
from connect.gateway.worker_waits import WorkerWaits
from connect.store.base import REPLY_STORED
from protocol import connect_pb2 as pb
from protocol import limits
from protocol.leases import EXTENSION_SLACK, Lease, LeaseTable

log = logging.getLogger("connect.gateway")

FORWARD_ATTEMPTS = 3
_EMPTY_TRACE = b"{}"


class LeaseRow(Protocol):
    @property
    def lease_id(self) -> str: ...
    @property
    def expires_at_ms(self) -> int: ...
    @property
    def instance_id(self) -> str: ...


class GatewayStore(ReplyStore, Protocol):
    """What the gateway needs from the store (see connect.store)."""

    def put_lease(self, request_id: str, lease_id: str, expires_at_ms: int, instance_id: str) -> Awaitable[None]: ...
    async def get_lease(self, request_id: str) -> LeaseRow | None: ...
    def delete_lease(self, request_id: str) -> Awaitable[None]: ...


class SharedStore(GatewayStore, Protocol):
    """What a gateway among others needs from the store they share (see connect.store)."""

    async def notify(self, channel: str, payload: str) -> None: ...
    def put_lease_within(
        self, request_id: str, lease_id: str, expires_at_ms: int, instance_id: str, limit: int, now_ms: int
    ) -> Awaitable[bool]: ...


class _Refused(Exception):
    """The worker did not ACK the request; it may go to another worker."""


def _in_background(write: Callable[[], Awaitable[None]]) -> None:
    """Start a lease write nobody waits for; a failure is logged, never raised
    (a closing store must not turn a delivered reply into an error)."""
    try:
        started = asyncio.ensure_future(write())
    except Exception:
        log.warning("a lease write was refused", exc_info=True)
        return
    started.add_done_callback(_log_failed_write)


def _log_failed_write(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("storing a lease failed", exc_info=fut.exception())


class GatewayDispatcher(ReplyIntake, CheckpointIntake):
    """Request tracking: route, lease, forward, await (replies and checkpoints
    are taken by `ReplyIntake` and `CheckpointIntake`)."""

    _store: GatewayStore

    def __init__(
        self,
        store: GatewayStore,
        *,
        lease_duration: float = limits.LEASE_DURATION,
        extend_lease_interval: float = limits.LEASE_EXTEND_INTERVAL,
        clock: Callable[[], float] = time.time,
        env_id: str = "dev",
        shared_with: SharedStore | None = None,
    ) -> None:
        """`shared_with`: the store other gateways share with this one (None:
        the only gateway); replies, lease extensions and capacity are then
        coordinated through it (see the module's docstring)."""
        self._store = store
        self._shared = shared_with
        self._clock = clock
        self.env_id = env_id
        self.capacity = InstanceCapacity()
        self.router: Router[Connection] = Router(self.capacity)
        self.leases = LeaseTable(lease_duration)
        self.extend_lease_interval = extend_lease_interval
        self._pending: dict[str, InFlight] = {}
        self._deciding: dict[str, InFlight] = {}
        self._handed: dict[str, tuple[RequestFlow, ReplyDone]] = {}
        self._waits = WorkerWaits()
        self._capacity_listeners: list[Callable[[], None]] = []
        self._connection_listeners: list[Callable[[], None]] = []
        #: Requests whose stored lease was read here to extend it, not dispatched here.
        self._elsewhere: set[str] = set()
        # The lease watchdog: one timer for every awaited request (see `_watch_until`).
        self._watch: asyncio.TimerHandle | None = None
        self._watch_at = math.inf
        # Replies that had to wait for something (a checkpoint, a stored reply's read).
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        """Requests whose `dispatch` has not returned (with a worker, waiting for one, or being stored)."""
        return len(self._pending)

    # --- the port (connect.dispatch.Port) ------------------------------------------------

    async def dispatch(self, request: StepRequest, receiver: CheckpointReceiver | None = None) -> StepReply:
        rid = request.request_id
        if request.offers_checkpoints and receiver is None:
            raise ValueError(f"request {rid} offers checkpoints: dispatch it with a CheckpointReceiver")
        pending = self._pending[rid] = InFlight(
            asyncio.get_running_loop().create_future(),
            request.takes_over,
            receiver if request.offers_checkpoints else None,
            request.run_id,
        )
        try:
            if not request.fresh:
                stored = await self._store.get_reply(rid)
                if stored is not None:
                    return reply_from_bytes(stored)
                lease = await self._known_lease(rid)
                if lease is not None and lease.active(self._clock()):
                    # A worker still runs this request (e.g. we restarted): wait for it.
                    return await self._await_reply(rid, pending)
            for _ in range(FORWARD_ATTEMPTS):
                if pending.reply is not None:
                    # Taken while we looked (a lost worker's late reply, say):
                    # it answers the request, which need not run again.
                    return pending.reply
                if pending.flow.state is not State.RUNNING:
                    # Such a reply is being stored: it answers, once stored.
                    return await self._await_reply(rid, pending)
                if await self._forward(request, pending):
                    with contextlib.suppress(_Refused):
                        return await self._await_reply(rid, pending)
            raise NoWorker(f"forwarding {rid} failed {FORWARD_ATTEMPTS} times")
        except BaseException:
            if pending.reply is not None:
                # Handed over, but nobody will commit it: store it here.
                self.settle_reply(ReplySettled(rid, committed=False))
            raise
        finally:
            if self._pending.get(rid) is pending:
                del self._pending[rid]

    def send(self, message: ExecutorMessage) -> None:
        if isinstance(message, ReplySettled):
            self.settle_reply(message)
        elif isinstance(message, CheckpointDecided):
            self.decide_checkpoint(message)
        else:
            self.join_checkpoint(message)

    async def wait_for_worker(self, app_name: str, function_slug: str, timeout: float) -> None:
        if self.router.has_candidate(app_name, function_slug):
            return
        await self._waits.wait((app_name, function_slug), timeout)

    def waiting(self) -> int:
        """How many runs wait for a worker (for tests and metrics)."""
        return len(self._waits)

    # --- events from connections -------------------------------------------------------

    def connection_ready(self, conn: Connection) -> None:
        self.router.add(conn)
        limit = self.capacity.limit(conn.instance_id)
        room = None if limit is None else max(0, limit - self.capacity.in_flight(conn.instance_id))
        self._waits.wake(conn.functions, room)
        self._capacity_changed()
        self._connections_changed()

    def add_connection_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` whenever a connection became ready or stopped being
        routable (see `connect.gateway.registry`)."""
        self._connection_listeners.append(listener)

    def _connections_changed(self) -> None:
        for listener in self._connection_listeners:
            listener()

    def _capacity_changed(self) -> None:
        for listener in self._capacity_listeners:
            listener()

    def add_capacity_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` whenever capacity may have appeared: a connection
        ready, a request's slot released (see `connect.gateway.pump`)."""
        self._capacity_listeners.append(listener)

    def connection_unroutable(self, conn: Connection) -> None:
        self.router.remove(conn)
        self._connections_changed()

    def connection_lost(self, conn: Connection, clean: bool, *, keep_for: float = 0.0) -> None:
        """A socket ended. The requests its instance runs must be extended over
        another connection when their next extension is due, with
        `EXTENSION_SLACK` (a worker that reconnects, or has one open already,
        does so on its usual schedule); silence past that dispatches them
        again instead of waiting out the whole lease. A clean close is no exception: the worker has delivered
        what it could, and what it abandoned past its drain deadline should
        not wait for the lease either. `keep_for`: seconds from now before
        which none of them lapses (a connection dropped here while its worker
        may be alive, but cut off)."""
        self.router.remove(conn)
        self._connections_changed()
        if not conn.instance_id:
            return
        now = self._clock()
        shortened = self.leases.shorten(conn.instance_id, now, self.extend_lease_interval, not_before=now + keep_for)
        if shortened:
            log.info(
                "connection %s of %s closed (%s): %d requests run elsewhere unless extended when due "
                "(every %.1f s, %.1f s of slack%s)",
                conn.connection_id,
                conn.instance_id,
                "clean" if clean else "unclean",
                len(shortened),
                self.extend_lease_interval,
                EXTENSION_SLACK,
                f", not before {keep_for:.1f} s from now" if keep_for else "",
                extra={"connection_id": conn.connection_id, "instance_id": conn.instance_id},
            )
        for lease in shortened:
            pending = self._pending.get(lease.request_id)
            if pending is not None:
                pending.poke()  # recompute the deadline

    def request_acked(self, request_id: str, ok: bool) -> None:
        pending = self._pending.get(request_id)
        if pending is not None and pending.flow.handle(Acknowledged(ok)):
            pending.poke()  # refused: `dispatch` forwards it again

    async def extend_lease(self, data: pb.WorkerRequestExtendLeaseData, instance_id: str) -> str | None:
        """Extend a request's lease for `instance_id`; None is a NACK."""
        lease = await self._known_lease(data.request_id)
        if lease is None:
            return None
        extended = self.leases.extend(data.request_id, data.lease_id, instance_id, self._clock())
        if extended is None and self._shared is not None and await self._adopt_stored_lease(data.request_id):
            # Extended through another gateway since this one last saw it.
            extended = self.leases.extend(data.request_id, data.lease_id, instance_id, self._clock())
        if extended is None:
            return None
        pending = self._pending.get(data.request_id)
        if pending is None or pending.reply is None:  # a stored reply already ended the stored lease
            self._persist_lease(extended)
        return extended.lease_id

    # --- among other gateways ----------------------------------------------------------------

    def reply_stored_elsewhere(self, request_id: str) -> None:
        """A `REPLY_STORED` notification: the reply to `request_id` was stored
        by another process ("": notifications may have been lost). A request
        awaited here is answered from the stored reply; a lease of any
        instance may have ended, so full instances are looked at again."""
        if self.capacity.clear_full():
            self._capacity_changed()
        if request_id:
            rids = [request_id] if request_id in self._pending else []
        else:
            rids = [rid for rid, pending in self._pending.items() if pending.awaiting]
        for rid in rids:
            task = asyncio.ensure_future(self._answer_from_store(rid))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def recheck_capacity(self) -> None:
        """Forget which instances the store found full (for the pump's slow
        sweep: a notification that would have said a lease ended may be lost)."""
        if self.capacity.clear_full():
            self._capacity_changed()

    def forget_leases_held_elsewhere(self) -> int:
        """Drop lapsed leases of requests not dispatched here (read from the
        store to extend them for a worker that moved here); returns how many."""
        now = self._clock()
        stale = []
        for rid in list(self._elsewhere):
            lease = self.leases.get(rid)
            if rid in self._pending or lease is None or not lease.active(now):
                self._elsewhere.discard(rid)
            if rid not in self._pending and lease is not None and not lease.active(now):
                self.leases.release(rid)
                stale.append(rid)
        return len(stale)

    async def _answer_from_store(self, rid: str) -> None:
        try:
            raw = await self._store.get_reply(rid)
        except Exception:
            log.warning("reading the stored reply of %s failed; its lease decides", rid, exc_info=True)
            return
        pending = self._pending.get(rid)
        if raw is not None and pending is not None and pending.reply is None:
            pending.reply = reply_from_bytes(raw)
            pending.poke()

    def _stored_for_another(self, request_id: str, stored: bool) -> None:
        """A reply for a request not dispatched here was stored (`stored`: by
        this call, not before): announce it to the gateway that holds it."""
        self.leases.release(request_id)
        self._elsewhere.discard(request_id)
        if stored and self._shared is not None:
            shared = self._shared

            async def announce() -> None:
                try:
                    await shared.notify(REPLY_STORED, request_id)
                except Exception:
                    # The gateway holding it reads the reply when the lease ends.
                    log.warning("cannot announce the reply stored for %s", request_id, exc_info=True)

            _in_background(announce)

    async def _adopt_stored_lease(self, rid: str) -> bool:
        """Whether the stored lease of `rid` was extended by another gateway
        and lives on; if so it replaces the one known here."""
        try:
            row = await self._store.get_lease(rid)
        except Exception:
            log.warning("reading the stored lease of %s failed", rid, exc_info=True)
            return False
        if row is None or row.expires_at_ms / 1000.0 <= self._clock():
            return False
        known = self.leases.get(rid)
        if known is not None and row.lease_id in (known.lease_id, known.prev_lease_id):
            return False  # this gateway's own write: nothing new
        previous = "" if known is None else known.lease_id
        self.leases.restore(Lease(rid, row.lease_id, row.instance_id, row.expires_at_ms / 1000.0, previous))
        return True

    async def _lease_within(self, lease: Lease, limit: int, now: float) -> bool:
        """Store the lease if the instance has room across gateways; False
        (slot and lease released here, the instance marked full) if not."""
        assert self._shared is not None
        try:
            granted = await self._shared.put_lease_within(
                lease.request_id,
                lease.lease_id,
                int(lease.expires_at * 1000),
                lease.instance_id,
                limit,
                int(now * 1000),
            )
        except Exception:
            log.warning("storing the lease of %s failed", lease.request_id, exc_info=True)
            granted = False
        else:
            if not granted:
                self.capacity.mark_full(lease.instance_id)
        if not granted:
            self.capacity.release(lease.request_id)
            self.leases.release(lease.request_id)
        return granted

    # --- internals -------------------------------------------------------------------------

    async def _known_lease(self, rid: str) -> Lease | None:
        lease = self.leases.get(rid)
        if lease is not None:
            return lease
        row = await self._store.get_lease(rid)
        if row is None:
            return None
        lease = Lease(rid, row.lease_id, row.instance_id, row.expires_at_ms / 1000.0)
        self.leases.restore(lease)
        if rid not in self._pending:
            self._elsewhere.add(rid)
        return lease

    def _persist_lease(self, lease: Lease) -> None:
        # Queued now, in order with every other write: this lease is committed
        # no later than any reply for the same request, without making the
        # forward wait for it.
        expires_ms = int(lease.expires_at * 1000)
        _in_background(lambda: self._store.put_lease(lease.request_id, lease.lease_id, expires_ms, lease.instance_id))

    async def _forward(self, request: StepRequest, pending: InFlight) -> bool:
        """Send the request to one worker; False if that failed at once.

        Whether the worker ACKs is learned while awaiting the reply: a
        successful ACK costs no wake-up of its own."""
        rid = request.request_id
        conn = self.router.pick(request.app_name, request.function_slug)
        if not self.capacity.assign(conn.instance_id, rid):  # pick() checked; kept for safety
            return False
        now = self._clock()
        lease = self.leases.grant(rid, conn.instance_id, now)
        limit = self.capacity.limit(conn.instance_id)
        if self._shared is None or limit is None:
            self._persist_lease(lease)
        elif not await self._lease_within(lease, limit, now):
            return False
        pending.flow.handle(Forwarded())
        try:
            await conn.send_request(self._frame(request, lease.lease_id), now)
            conn.awaits_worker()
        except Exception:  # the socket died under us: treat as a failed forward
            log.debug("forward of %s to %s failed", rid, conn.connection_id, exc_info=True)
            self._finish(rid, stored=False)
            return False
        return True

    async def _await_reply(self, rid: str, pending: InFlight) -> StepReply:
        """Wait for the reply while the lease lives. Raises `_Refused` when
        the worker NACKed the request (the caller forwards it again)."""
        loop = asyncio.get_running_loop()
        stored = False
        pending.awaiting = True
        try:
            while True:
                if pending.reply is not None:
                    stored = True
                    return pending.reply
                if pending.flow.acked is False and pending.flow.state is State.RUNNING:
                    raise _Refused
                lease = self.leases.get(rid)
                if lease is None:
                    raise WorkerStoppedResponding(f"request {rid} has no lease")
                deadline = lease.expires_at
                if deadline > self._clock():
                    if pending.wake.done():
                        pending.wake = loop.create_future()
                    self._watch_until(deadline)
                    await pending.wake
                    continue  # a reply, a NACK, a shortened or extended lease, or the deadline
                raw = await self._store.get_reply(rid)
                if raw is not None:
                    stored = True
                    return reply_from_bytes(raw)
                if self._shared is not None and await self._adopt_stored_lease(rid):
                    continue  # extended through another gateway: wait on
                pending.flow.handle(LeaseLapsed())
                raise WorkerStoppedResponding(f"the worker stopped responding to request {rid} (its lease lapsed)")
        except asyncio.CancelledError:
            # Among other gateways, a stopping one leaves the stored lease: the
            # gateway that takes the request next waits for the worker on it.
            stored = stored or self._shared is not None
            raise
        finally:
            pending.awaiting = False
            self._finish(rid, stored=stored)

    def _watch_until(self, deadline: float) -> None:
        """Make sure the lease watchdog runs no later than `deadline` (on `clock`).

        One timer serves every awaited request. Leases are granted for one
        duration, so a new wait's deadline is almost never earlier than the
        one the timer is set for: a step costs no timer of its own (setting
        and cancelling one per step cost more than the rest of the wait)."""
        if deadline >= self._watch_at:
            return
        if self._watch is not None:
            self._watch.cancel()
        self._watch_at = deadline
        self._watch = asyncio.get_running_loop().call_later(max(0.0, deadline - self._clock()), self._on_watch)

    def _on_watch(self) -> None:
        """Wake each awaited request whose lease ran out; set the timer for the next deadline."""
        self._watch, self._watch_at = None, math.inf
        now = self._clock()
        earliest = math.inf
        for rid, pending in self._pending.items():
            if not pending.awaiting:
                continue
            lease = self.leases.get(rid)
            deadline = now if lease is None else lease.expires_at
            if deadline <= now:
                pending.poke()  # its `_await_reply` looks again, and sets the timer if it still waits
            else:
                earliest = min(earliest, deadline)
        if earliest < math.inf:
            self._watch_until(earliest)

    def _finish(self, rid: str, *, stored: bool) -> None:
        instance = self.capacity.release(rid)
        if instance is not None:
            self.capacity.clear_full(instance)
            if self._waits:
                self._waits.wake(self.router.functions_of(instance), 1)
            self._capacity_changed()
        if self.leases.release(rid) is not None and not stored:
            _in_background(lambda: self._store.delete_lease(rid))

    def _frame(self, request: StepRequest, lease_id: str) -> pb.GatewayExecutorRequestData:
        return pb.GatewayExecutorRequestData(
            request_id=request.request_id,
            env_id=self.env_id,
            app_id=request.app_name,
            app_name=request.app_name,
            function_id=request.function_slug,
            function_slug=request.function_slug,
            step_id=request.step_id,
            request_payload=request.payload,
            system_trace_ctx=_EMPTY_TRACE,
            user_trace_ctx=_EMPTY_TRACE,
            run_id=request.run_id,
            lease_id=lease_id,
            job_id=request.job_id,
        )
