"""The gateway's implementation of `Dispatcher`: route, lease, forward, await.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol

from connect.gateway.capacity import InstanceCapacity
from connect.gateway.connection import Connection
from connect.gateway.dispatch import (
    CheckpointTaken,
    Join,
    NoWorker,
    StepReply,
    StepRequest,
    Stored,
    WorkerStoppedResponding,
)
from connect.gateway.routing import Router
from protocol import connect_pb2 as pb
from protocol import limits
from protocol.leases import EXTENSION_SLACK, Lease, LeaseTable

log = logging.getLogger("connect.gateway")

FORWARD_ATTEMPTS = 3
_EMPTY_TRACE = b"{}"

#: Told how storing a reply ended: None once it is durable, else the error.
ReplyDone = Callable[[BaseException | None], None]


class LeaseRow(Protocol):
    @property
    def lease_id(self) -> str: ...
    @property
    def expires_at_ms(self) -> int: ...
    @property
    def instance_id(self) -> str: ...


class ReplyStore(Protocol):
    """What the gateway needs from the store (see connect.store)."""

    def put_reply(self, request_id: str, data: bytes) -> Awaitable[bool]: ...
    async def get_reply(self, request_id: str) -> bytes | None: ...
    def put_lease(self, request_id: str, lease_id: str, expires_at_ms: int, instance_id: str) -> Awaitable[None]: ...
    async def get_lease(self, request_id: str) -> LeaseRow | None: ...
    def delete_lease(self, request_id: str) -> Awaitable[None]: ...


class _Refused(Exception):
    """The worker did not ACK the request; it may go to another worker."""


class _Pending:
    """One request this process dispatched and awaits.

    `wake` is the one future its `dispatch` sleeps on; anything that may
    change the outcome resolves it (a reply, a failed ACK, a shortened lease,
    the lease timer) and `dispatch` looks at the fields to see what happened.
    A successful ACK only records itself: it needs no wake-up."""

    __slots__ = (
        "acked",
        "awaiting",
        "checkpoint",
        "checkpointing",
        "refused",
        "reply",
        "reply_behind",
        "run_id",
        "takes_over",
        "wake",
    )

    def __init__(
        self,
        wake: asyncio.Future[None],
        takes_over: bool,
        checkpoint: Callable[[StepReply, Join | None], Awaitable[bool]] | None,
        run_id: str = "",
    ) -> None:
        self.wake = wake
        self.run_id = run_id
        self.takes_over = takes_over
        self.checkpoint = checkpoint
        # Set while a checkpoint is being stored; resolved once it is decided.
        self.checkpointing: asyncio.Future[None] | None = None
        # The worker's reply came while a checkpoint was being stored, and waits for it.
        self.reply_behind = False
        # The last refused checkpoint: it stands in for the request's reply
        # (also one joined to the reply whose commit failed).
        self.refused: bytes | None = None
        self.acked: bool | None = None
        self.reply: StepReply | None = None
        # Set while `dispatch` waits for a worker's reply: the lease watchdog looks at it.
        self.awaiting = False

    def poke(self) -> None:
        if not self.wake.done():
            self.wake.set_result(None)


def _in_background(write: Callable[[], Awaitable[None]]) -> None:
    """Start a lease write nobody waits for; a failure is logged, never raised
    (a closing store must not turn a delivered reply into an error)."""
    try:
        started = asyncio.ensure_future(write())
    except Exception:
        log.warning("a lease write was refused", exc_info=True)
        return
    started.add_done_callback(_log_failed_write)


def _resolve(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    elif isinstance(error, asyncio.CancelledError):
        fut.cancel()
    else:
        fut.set_exception(error)


def _answered(loop: asyncio.AbstractEventLoop, answer: bool) -> asyncio.Future[bool]:
    """A future already holding `answer`."""
    fut: asyncio.Future[bool] = loop.create_future()
    fut.set_result(answer)
    return fut


def _reply_of(
    raw: bytes, response: pb.SDKResponse | None, on_settle: Callable[[bool], None] | None = None
) -> StepReply:
    return reply_from_bytes(raw, on_settle) if response is None else reply_from_message(response, on_settle)


def _log_failed_write(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("storing a lease failed", exc_info=fut.exception())


def reply_from_bytes(raw: bytes, on_settle: Callable[[bool], None] | None = None) -> StepReply:
    msg = pb.SDKResponse()
    msg.ParseFromString(raw)
    return reply_from_message(msg, on_settle)


def reply_from_message(msg: pb.SDKResponse, on_settle: Callable[[bool], None] | None = None) -> StepReply:
    return StepReply(
        on_settle=on_settle,
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
        self.router: Router[Connection] = Router(self.capacity)
        self.leases = LeaseTable(lease_duration)
        self.extend_lease_interval = extend_lease_interval
        self._pending: dict[str, _Pending] = {}
        # Runs waiting for a worker, per (app, function), oldest first. A freed
        # slot wakes one of them; a newly ready connection wakes as many as it
        # has room for. Waking everyone on every change would make every
        # freed slot a stampede of retries.
        self._waiting: dict[tuple[str, str], dict[asyncio.Future[None], None]] = {}
        # The lease watchdog: one timer for every awaited request (see `_watch_until`).
        self._watch: asyncio.TimerHandle | None = None
        self._watch_at = math.inf
        # Replies that had to wait for something (a checkpoint, a stored reply's read).
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        """Requests whose `dispatch` has not returned (with a worker, waiting for one, or being stored)."""
        return len(self._pending)

    # --- Dispatcher ---------------------------------------------------------------

    async def dispatch(self, request: StepRequest) -> StepReply:
        rid = request.request_id
        pending = self._pending[rid] = _Pending(
            asyncio.get_running_loop().create_future(), request.takes_over, request.checkpoint, request.run_id
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
                if await self._forward(request, pending):
                    with contextlib.suppress(_Refused):
                        return await self._await_reply(rid, pending)
            raise NoWorker(f"forwarding {rid} failed {FORWARD_ATTEMPTS} times")
        except BaseException:
            if pending.reply is not None:
                pending.reply.settle(False)  # handed over, but nobody will commit it: store it here
            raise
        finally:
            if self._pending.get(rid) is pending:
                del self._pending[rid]

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
        """A socket ended. The requests its instance runs must be extended over
        another connection when their next extension is due, with
        `EXTENSION_SLACK` (a worker that reconnects, or has one open already,
        does so on its usual schedule); silence past that dispatches them
        again instead of waiting out the whole lease. A clean close is no exception: the worker has delivered
        what it could, and what it abandoned past its drain deadline should
        not wait for the lease either."""
        self.router.remove(conn)
        if not conn.instance_id:
            return
        shortened = self.leases.shorten(conn.instance_id, self._clock(), self.extend_lease_interval)
        if shortened:
            log.info(
                "connection %s of %s closed (%s): %d requests run elsewhere unless extended when due "
                "(every %.1f s, %.1f s of slack)",
                conn.connection_id,
                conn.instance_id,
                "clean" if clean else "unclean",
                len(shortened),
                self.extend_lease_interval,
                EXTENSION_SLACK,
            )
        for lease in shortened:
            pending = self._pending.get(lease.request_id)
            if pending is not None:
                pending.poke()  # recompute the deadline

    def request_acked(self, request_id: str, ok: bool) -> None:
        pending = self._pending.get(request_id)
        if pending is not None and pending.acked is None:
            pending.acked = ok
            if not ok:
                pending.poke()

    async def accept_reply(self, raw: bytes, request_id: str) -> None:
        """Store a worker's reply (first stored wins), then wake its waiter;
        or hand it to a waiter that `takes_over` and wait for its commit.
        Returns only after the reply is durable: the caller ACKs after this.
        (`take_reply` is the same, told by a callback.)"""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.take_reply(request_id, raw, None, functools.partial(_resolve, done))
        await done

    def take_reply(self, request_id: str, raw: bytes, response: pb.SDKResponse | None, done: ReplyDone) -> None:
        """`accept_reply` for the gateway's sockets: `done(None)` once the
        reply is durable (the worker may be ACKed then), `done(error)` when
        storing it failed. `response` is `raw` parsed, if the caller has it.
        A reply needs no task of its own unless it waits for a checkpoint,
        or loses to a reply stored before it; `done` must not raise.

        A reply that follows a checkpoint still being stored waits for that
        checkpoint; after a refused checkpoint the reply *is* that checkpoint
        (the request ends with the step, as if the worker had waited for the
        answer before replying), see `accept_checkpoint`."""
        pending = self._pending.get(request_id)
        if pending is not None:
            if pending.checkpointing is not None:
                pending.reply_behind = True
                self._in_task(self._after_checkpoint(pending.checkpointing, request_id, raw, response, done), done)
                return
            if pending.refused is not None:
                raw, response = pending.refused, None
            if pending.takes_over and pending.reply is None:
                self._hand_over(pending, request_id, raw, response, done)
                return
        self._store_reply(request_id, raw, response, done)

    async def _after_checkpoint(
        self,
        decided: asyncio.Future[None],
        request_id: str,
        raw: bytes,
        response: pb.SDKResponse | None,
        done: ReplyDone,
    ) -> None:
        await asyncio.shield(decided)
        self.take_reply(request_id, raw, response, done)

    def _hand_over(
        self, pending: _Pending, request_id: str, raw: bytes, response: pb.SDKResponse | None, done: ReplyDone
    ) -> None:
        """Give the reply to its `takes_over` caller; durable once the caller
        settles it committed, or once stored here if the caller did not commit it."""
        settled = False

        def on_settle(committed: bool) -> None:
            nonlocal settled
            if settled:
                return
            settled = True
            if committed:
                done(None)  # the caller's commit holds it
            else:
                # A checkpoint joined to this reply and not stored (see
                # `_store_checkpoint`) is what the request answered.
                self._store_reply(request_id, pending.refused or raw, None, done)

        pending.reply = _reply_of(raw, response, on_settle)
        pending.poke()

    def _store_reply(self, request_id: str, raw: bytes, response: pb.SDKResponse | None, done: ReplyDone) -> None:
        try:
            stored = asyncio.ensure_future(self._store.put_reply(request_id, raw))
        except Exception as exc:  # a closed store refuses at once
            done(exc)
            return
        stored.add_done_callback(functools.partial(self._reply_stored, request_id, raw, response, done))

    def _reply_stored(
        self,
        request_id: str,
        raw: bytes,
        response: pb.SDKResponse | None,
        done: ReplyDone,
        stored: asyncio.Future[bool],
    ) -> None:
        if stored.cancelled():
            done(asyncio.CancelledError(f"storing reply {request_id} was cancelled"))
            return
        error = stored.exception()
        if error is not None:
            done(error)
            return
        pending = self._pending.get(request_id)
        if pending is not None and pending.reply is None:
            if not stored.result():
                # A reply was stored before this one (e.g. by an earlier
                # process): that one is the answer.
                self._in_task(self._wake_with_stored(request_id, raw, done), done)
                return
            pending.reply = _reply_of(raw, response)
            pending.poke()
        done(None)

    async def _wake_with_stored(self, request_id: str, raw: bytes, done: ReplyDone) -> None:
        stored = await self._store.get_reply(request_id)
        pending = self._pending.get(request_id)
        if pending is not None and pending.reply is None:
            pending.reply = reply_from_bytes(stored if stored is not None else raw)
            pending.poke()
        done(None)

    def _in_task(self, coro: Coroutine[Any, Any, None], done: ReplyDone) -> None:
        """Run `coro` (which calls `done` when it ends well); a failure is told to `done`."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_ended, done))

    def _task_ended(self, done: ReplyDone, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            done(asyncio.CancelledError("storing a reply was cancelled"))
        elif (error := task.exception()) is not None:
            done(error)

    def accept_checkpoint(
        self, raw: bytes, request_id: str, instance_id: str, response: pb.SDKResponse | None = None
    ) -> Awaitable[bool]:
        """Hand a worker's checkpoint to the request's caller; the result is
        True once the step is durably stored. False (the worker ends the
        request with the step) when the request offers no checkpoints, is
        not in flight here on `instance_id`, already has its reply, or has
        one checkpoint being stored already.

        Whether the checkpoint is taken is decided at the call, so a reply
        taken after it (the next frame of the same read) waits for it, or is
        stored with it (see `_store_checkpoint`). `response` is `raw` parsed,
        if the caller has it.

        A worker may send its reply right behind a checkpoint, before the
        answer (our worker does when the handler returns after its last
        step). So a refused checkpoint is kept, and the request's reply is
        that checkpoint whatever the worker sends next: exactly the reply a
        worker that waited for the refusal would send."""
        loop = asyncio.get_running_loop()
        pending = self._pending.get(request_id)
        if pending is None or pending.reply is not None or pending.checkpointing is not None:
            return _answered(loop, False)
        lease = self.leases.get(request_id)
        if pending.checkpoint is None or lease is None or lease.instance_id != instance_id:
            pending.refused = raw
            return _answered(loop, False)
        pending.checkpointing = loop.create_future()
        return self._store_checkpoint(pending, pending.checkpoint, pending.checkpointing, raw, response)

    @staticmethod
    async def _store_checkpoint(
        pending: _Pending,
        checkpoint: Callable[[StepReply, Join | None], Awaitable[bool]],
        decided: asyncio.Future[None],
        raw: bytes,
        response: pb.SDKResponse | None,
    ) -> bool:
        """Hand the checkpoint (`raw`, parsed as `response` if the caller has
        it) to the request's caller; True once it is stored.

        Starting a loop turn after the checkpoint was taken, this knows
        whether the request's reply came in the same read. If so, and the
        caller commits replies itself (`takes_over`), it may join the step to
        that reply (see `StepRequest.checkpoint`): the reply is handed over at
        once and one commit stores both, so a run's last step and its end
        cost one commit instead of two. The answer
        then waits for that commit; if it fails, the checkpoint is refused
        after all and the request's reply, should the dispatcher have to
        store it, is the checkpoint."""
        joined: asyncio.Future[bool] | None = None

        def join() -> Stored:
            nonlocal joined
            joined = asyncio.get_running_loop().create_future()
            pending.checkpointing = None
            decided.set_result(None)  # the reply behind it goes on

            def stored_with_reply(ok: bool) -> None:
                # Called before the reply is settled: a failed commit must make
                # the checkpoint the reply the dispatcher stores (`_hand_over`).
                pending.refused = None if ok else raw
                if joined is not None and not joined.done():
                    joined.set_result(ok)

            return stored_with_reply

        stored = False
        try:
            # Only a caller that commits the reply itself (`takes_over`) can store both at once.
            offer = join if pending.reply_behind and pending.takes_over else None
            stored = await checkpoint(_reply_of(raw, response), offer)
            if joined is not None:
                stored = await joined
            return stored
        finally:
            if joined is None:
                pending.refused = None if stored else raw
                pending.checkpointing = None
                decided.set_result(None)

    async def checkpoint_over_http(self, run_id: str, request_id: str, body: bytes) -> CheckpointTaken:
        """Steps an official TypeScript worker ran in request `request_id`
        and posts (`body`: a JSON array of StepRun ops) before going on.

        Unlike a WORKER_CHECKPOINT, a declined one is not kept as the
        request's reply: the SDK itself ends the request with the steps when
        the checkpoint fails. Nothing names the worker here (the call is
        authenticated by the signing key under `connect serve`), so a worker
        whose lease lapsed may still store a step: that is a step result like
        any other, and the first stored for a step wins."""
        pending = self._pending.get(request_id)
        if pending is None or pending.reply is not None or pending.run_id != run_id:
            return CheckpointTaken.STALE
        if pending.checkpoint is None or pending.checkpointing is not None:
            return CheckpointTaken.DECLINED
        decided = pending.checkpointing = asyncio.get_running_loop().create_future()
        reply = StepReply(request_id=request_id, status=pb.NOT_COMPLETED, body=body)
        stored = False
        try:
            stored = await pending.checkpoint(reply, None)
        finally:
            pending.checkpointing = None
            decided.set_result(None)
        return CheckpointTaken.STORED if stored else CheckpointTaken.DECLINED

    def reply_behind(self, request_id: str) -> bool:
        """Whether the request's reply came while its checkpoint was being
        stored: the worker has returned and waits for neither answer."""
        pending = self._pending.get(request_id)
        return pending is not None and pending.reply_behind

    async def extend_lease(self, data: pb.WorkerRequestExtendLeaseData, instance_id: str) -> str | None:
        """Extend a request's lease for `instance_id`; None is a NACK."""
        lease = await self._known_lease(data.request_id)
        if lease is None:
            return None
        extended = self.leases.extend(data.request_id, data.lease_id, instance_id, self._clock())
        if extended is None:
            return None
        pending = self._pending.get(data.request_id)
        if pending is None or pending.reply is None:  # a stored reply already ended the stored lease
            self._persist_lease(extended)
        return extended.lease_id

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
        return lease

    def _persist_lease(self, lease: Lease) -> None:
        # Queued now, in order with every other write: this lease is committed
        # no later than any reply for the same request, without making the
        # forward wait for it.
        expires_ms = int(lease.expires_at * 1000)
        _in_background(lambda: self._store.put_lease(lease.request_id, lease.lease_id, expires_ms, lease.instance_id))

    async def _forward(self, request: StepRequest, pending: _Pending) -> bool:
        """Send the request to one worker; False if that failed at once.

        Whether the worker ACKs is learned while awaiting the reply: a
        successful ACK costs no wake-up of its own."""
        rid = request.request_id
        conn = self.router.pick(request.app_name, request.function_slug)
        if not self.capacity.assign(conn.instance_id, rid):  # pick() checked; kept for safety
            return False
        now = self._clock()
        lease = self.leases.grant(rid, conn.instance_id, now)
        self._persist_lease(lease)
        pending.acked = None
        pending.refused = None
        try:
            await conn.send_request(self._frame(request, lease.lease_id), now)
            conn.awaits_worker()
        except Exception:  # the socket died under us: treat as a failed forward
            log.debug("forward of %s to %s failed", rid, conn.connection_id, exc_info=True)
            self._finish(rid, stored=False)
            return False
        return True

    async def _await_reply(self, rid: str, pending: _Pending) -> StepReply:
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
                if pending.acked is False:
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
                raise WorkerStoppedResponding(f"the worker stopped responding to request {rid} (its lease lapsed)")
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
        if instance is not None and self._waiting:
            self._wake(self.router.functions_of(instance), 1)
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
