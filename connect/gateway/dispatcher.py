"""The gateway's implementation of `Dispatcher`: route, lease, forward, await.

Durability rules held here:

* a reply is stored (`put_reply`, first stored wins) before anyone is told
  about it, and before the worker gets WORKER_REPLY_ACK;
* a lease is written to the store before the reply can be, so a restarted
  process that finds a live lease waits for that worker instead of running
  the step a second time;
* every capacity slot taken is released on every path out of `dispatch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from connect.gateway.capacity import InstanceCapacity
from connect.gateway.connection import Connection
from connect.gateway.dispatch import NoWorker, StepReply, StepRequest, WorkerStoppedResponding
from connect.gateway.routing import Router
from protocol import connect_pb2 as pb
from protocol import limits
from protocol.leases import Lease, LeaseTable

log = logging.getLogger("connect.gateway")

FORWARD_ATTEMPTS = 3
LEASE_GRACE = 5.0
_EMPTY_TRACE = b"{}"


class LeaseRow(Protocol):
    @property
    def lease_id(self) -> str: ...
    @property
    def expires_at_ms(self) -> int: ...
    @property
    def instance_id(self) -> str: ...


class ReplyStore(Protocol):
    """What the gateway needs from the store (see connect.store)."""

    async def put_reply(self, request_id: str, data: bytes) -> bool: ...
    async def get_reply(self, request_id: str) -> bytes | None: ...
    async def put_lease(self, request_id: str, lease_id: str, expires_at_ms: int, instance_id: str) -> None: ...
    async def get_lease(self, request_id: str) -> LeaseRow | None: ...
    async def delete_lease(self, request_id: str) -> None: ...


def reply_from_bytes(raw: bytes) -> StepReply:
    msg = pb.SDKResponse()
    msg.ParseFromString(raw)
    return StepReply(
        request_id=msg.request_id,
        status=int(msg.status),
        body=msg.body,
        no_retry=msg.no_retry,
        retry_after=msg.retry_after if msg.HasField("retry_after") else None,
        sdk_version=msg.sdk_version,
        request_version=msg.request_version,
    )


class GatewayDispatcher:
    def __init__(
        self,
        store: ReplyStore,
        *,
        lease_duration: float = limits.LEASE_DURATION,
        extend_lease_interval: float = limits.LEASE_EXTEND_INTERVAL,
        clock: Callable[[], float] = time.time,
        env_id: str = "dev",
    ) -> None:
        self._store = store
        self._clock = clock
        self.env_id = env_id
        self.capacity = InstanceCapacity()
        self.router = Router(self.capacity)
        self.leases = LeaseTable(lease_duration)
        self.extend_lease_interval = extend_lease_interval
        self._nudges: dict[str, asyncio.Event] = {}
        self._replies: dict[str, asyncio.Future[StepReply]] = {}
        self._acks: dict[str, asyncio.Future[bool]] = {}
        # Runs waiting for a worker, per (app, function), oldest first. A freed
        # slot wakes one of them; a newly ready connection wakes as many as it
        # has room for. Waking everyone on every change would make every
        # freed slot a stampede of retries.
        self._waiting: dict[tuple[str, str], dict[asyncio.Future[None], None]] = {}
        self._background: set[asyncio.Task[None]] = set()

    # --- Dispatcher ---------------------------------------------------------------

    async def dispatch(self, request: StepRequest) -> StepReply:
        rid = request.request_id
        waiter = self._reply_waiter(rid)
        try:
            if not request.fresh:
                stored = await self._store.get_reply(rid)
                if stored is not None:
                    return reply_from_bytes(stored)
                lease = await self._known_lease(rid)
                if lease is not None and lease.active(self._clock()):
                    # A worker still runs this request (e.g. we restarted): wait for it.
                    return await self._await_reply(rid, waiter)
            for _ in range(FORWARD_ATTEMPTS):
                if await self._forward(request):
                    return await self._await_reply(rid, waiter)
            raise NoWorker(f"forwarding {rid} failed {FORWARD_ATTEMPTS} times")
        finally:
            self._replies.pop(rid, None)
            if not waiter.done():
                waiter.cancel()

    async def wait_for_worker(self, app_name: str, function_slug: str, timeout: float) -> None:
        if self.router.has_candidate(app_name, function_slug):
            return
        key = (app_name, function_slug)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiting.setdefault(key, {})
        queue[fut] = None
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, timeout)
        finally:
            queue.pop(fut, None)
            if not queue and self._waiting.get(key) is queue:
                del self._waiting[key]

    def waiting(self) -> int:
        """How many runs wait for a worker (for tests and metrics)."""
        return sum(len(q) for q in self._waiting.values())

    # --- events from connections -------------------------------------------------------

    def _wake(self, keys: Iterable[tuple[str, str]], count: int | None) -> None:
        """Wake up to `count` waiters (None: all) among `keys`, oldest first per key."""
        for key in keys:
            queue = self._waiting.get(key)
            while queue and (count is None or count > 0):
                fut = next(iter(queue))
                del queue[fut]
                if not fut.done():
                    fut.set_result(None)
                    if count is not None:
                        count -= 1
            if count == 0:
                return

    def connection_ready(self, conn: Connection) -> None:
        self.router.add(conn)
        limit = self.capacity.limit(conn.instance_id)
        room = None if limit is None else max(0, limit - self.capacity.in_flight(conn.instance_id))
        self._wake(conn.functions, room)

    def connection_unroutable(self, conn: Connection) -> None:
        self.router.remove(conn)

    def connection_lost(self, conn: Connection, clean: bool) -> None:
        """A socket ended. After an unclean end, the requests its instance runs
        get one extension interval (plus grace) to be extended over some other
        connection; silence past that re-dispatches them instead of waiting
        out the whole lease."""
        self.router.remove(conn)
        if clean or not conn.instance_id:
            return
        cutoff = self._clock() + self.extend_lease_interval
        for lease in self.leases.owned_by(conn.instance_id):
            if lease.expires_at > cutoff:
                lease.expires_at = cutoff
                nudge = self._nudges.get(lease.request_id)
                if nudge is not None:
                    nudge.set()

    def request_acked(self, request_id: str, ok: bool) -> None:
        fut = self._acks.get(request_id)
        if fut is not None and not fut.done():
            fut.set_result(ok)

    async def accept_reply(self, raw: bytes, request_id: str) -> None:
        """Store a worker's reply (first stored wins), then wake its waiter.
        Returns only after the reply is durable: the caller ACKs after this."""
        first = await self._store.put_reply(request_id, raw)
        waiter = self._replies.get(request_id)
        if waiter is None or waiter.done():
            return
        if not first:
            stored = await self._store.get_reply(request_id)
            raw = stored if stored is not None else raw
        if not waiter.done():
            waiter.set_result(reply_from_bytes(raw))

    async def extend_lease(self, data: pb.WorkerRequestExtendLeaseData, instance_id: str) -> str | None:
        """Extend a request's lease for `instance_id`; None is a NACK."""
        lease = await self._known_lease(data.request_id)
        if lease is None:
            return None
        extended = self.leases.extend(data.request_id, data.lease_id, instance_id, self._clock())
        if extended is None:
            return None
        self._persist_lease(extended)
        return extended.lease_id

    # --- internals -------------------------------------------------------------------------

    def _reply_waiter(self, rid: str) -> asyncio.Future[StepReply]:
        fut: asyncio.Future[StepReply] = asyncio.get_running_loop().create_future()
        self._replies[rid] = fut
        return fut

    async def _known_lease(self, rid: str) -> Lease | None:
        lease = self.leases.get(rid)
        if lease is not None:
            return lease
        row = await self._store.get_lease(rid)
        if row is None:
            return None
        lease = Lease(rid, row.lease_id, row.instance_id, row.expires_at_ms / 1000.0)
        self.leases.restore(lease)
        return lease

    def _persist_lease(self, lease: Lease) -> None:
        # The store's writer is FIFO: this lease is committed no later than any
        # reply for the same request, without making the forward wait for it.
        task = asyncio.ensure_future(
            self._store.put_lease(lease.request_id, lease.lease_id, int(lease.expires_at * 1000), lease.instance_id)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _forward(self, request: StepRequest) -> bool:
        """Send the request to one worker; True once that worker ACKed it."""
        rid = request.request_id
        conn = self.router.pick(request.app_name, request.function_slug)
        if not self.capacity.assign(conn.instance_id, rid):  # pick() checked; kept for safety
            return False
        now = self._clock()
        lease = self.leases.grant(rid, conn.instance_id, now)
        self._persist_lease(lease)
        ack: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._acks[rid] = ack
        try:
            conn.session.send_request(self._frame(request, lease.lease_id), now)
            await conn.flush()
            ok = await ack
        except Exception:  # the socket died under us: treat as a failed forward
            log.debug("forward of %s to %s failed", rid, conn.connection_id, exc_info=True)
            ok = False
        finally:
            self._acks.pop(rid, None)
        if not ok:
            self._finish(rid)
        return ok

    async def _await_reply(self, rid: str, waiter: asyncio.Future[StepReply]) -> StepReply:
        nudge = self._nudges[rid] = asyncio.Event()
        try:
            while True:
                lease = self.leases.get(rid)
                if lease is None:
                    raise WorkerStoppedResponding(f"request {rid} has no lease")
                timeout = lease.expires_at + LEASE_GRACE - self._clock()
                if timeout > 0:
                    nudge.clear()
                    nudged: asyncio.Future[Any] = asyncio.ensure_future(nudge.wait())
                    pending: set[asyncio.Future[Any]] = {waiter, nudged}
                    try:
                        await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        nudged.cancel()
                    if waiter.done():
                        return waiter.result()
                    if nudge.is_set():
                        continue  # the lease was shortened: recompute the deadline
                lease = self.leases.get(rid)
                if lease is not None and lease.expires_at + LEASE_GRACE > self._clock():
                    continue  # extended meanwhile
                stored = await self._store.get_reply(rid)
                if stored is not None:
                    return reply_from_bytes(stored)
                raise WorkerStoppedResponding(f"the worker stopped responding to request {rid}")
        finally:
            self._nudges.pop(rid, None)
            self._finish(rid)

    def _finish(self, rid: str) -> None:
        instance = self.capacity.release(rid)
        if instance is not None and self._waiting:
            self._wake(self.router.functions_of(instance), 1)
        if self.leases.release(rid) is not None:
            task = asyncio.ensure_future(self._store.delete_lease(rid))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

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
