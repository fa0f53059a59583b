"""Taking a worker's reply: hold it behind a checkpoint, hand it to a caller
that commits it, or store it; and tell the socket when it may ACK.

The order of those steps for one request is `RequestFlow`'s; this module
carries out its actions. A reply is acknowledged only once durable (see
`connect.gateway.dispatcher`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Coroutine
from typing import Any, Protocol

from connect.dispatch import ReplySettled
from connect.dispatch.flow import (
    Acknowledge,
    Action,
    Deliver,
    DeliverStored,
    HandOver,
    Hold,
    Replied,
    ReplyStored,
    RequestFlow,
    Store,
)
from connect.gateway.inflight import InFlight, ReplyDone, reply_from_bytes, reply_of, resolve
from protocol import connect_pb2 as pb


class ReplyStore(Protocol):
    """What the gateway needs from the store for replies (see connect.store)."""

    def put_reply(self, request_id: str, data: bytes) -> Awaitable[bool]: ...
    async def get_reply(self, request_id: str) -> bytes | None: ...


class ReplyIntake:
    """The reply half of `GatewayDispatcher` (which provides these attributes)."""

    _store: ReplyStore
    _pending: dict[str, InFlight]
    # Replies that had to wait for something (a checkpoint, a stored reply's read).
    _tasks: set[asyncio.Task[None]]
    # Replies handed to their `takes_over` caller and not settled yet, by request id.
    _handed: dict[str, tuple[RequestFlow, ReplyDone]]

    async def accept_reply(self, raw: bytes, request_id: str) -> None:
        """Store a worker's reply (first stored wins), then wake its waiter;
        or hand it to a waiter that `takes_over` and wait for its commit.
        Returns only after the reply is durable: the caller ACKs after this.
        (`take_reply` is the same, told by a callback.)"""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.take_reply(request_id, raw, None, functools.partial(resolve, done))
        await done

    def take_reply(self, request_id: str, raw: bytes, response: pb.SDKResponse | None, done: ReplyDone) -> None:
        """`accept_reply` for the gateway's sockets: `done(None)` once the
        reply is durable (the worker may be ACKed then), `done(error)` when
        storing it failed. `response` is `raw` parsed, if the caller has it.
        A reply needs no task of its own unless it waits for a checkpoint,
        or loses to a reply stored before it; `done` must not raise.

        A reply that follows a checkpoint still being decided waits for that
        checkpoint; after a refused checkpoint the reply *is* that checkpoint
        (the request ends with the step, as if the worker had waited for the
        answer before replying), see `connect.dispatch.flow`."""
        pending = self._pending.get(request_id)
        if pending is None:
            self._store_reply(request_id, raw, response, done, None)
            return
        for action in pending.flow.handle(Replied(raw)):
            if isinstance(action, Hold):
                assert pending.checkpointing is not None
                self._in_task(self._after_checkpoint(pending.checkpointing, request_id, raw, response, done), done)
            elif isinstance(action, HandOver):
                self._hand_over(pending, request_id, action.body, response if action.body is raw else None, done)
            elif isinstance(action, Store):
                body = action.body
                self._store_reply(request_id, body, response if body is raw else None, done, pending.flow)

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
        self, pending: InFlight, request_id: str, raw: bytes, response: pb.SDKResponse | None, done: ReplyDone
    ) -> None:
        """Give the reply to its `takes_over` caller; durable once the caller
        settles it committed, or once stored here if the caller did not commit it."""
        earlier = self._handed.get(request_id)
        if earlier is not None:  # never settled: nobody will commit it
            self.settle_reply(ReplySettled(request_id, committed=False))
        self._handed[request_id] = (pending.flow, done)
        pending.reply = reply_of(raw, response)
        pending.poke()

    def settle_reply(self, settled: ReplySettled) -> None:
        """The caller's commit made the handed-over reply durable, or did not.
        A reply not handed over (stored here), or settled already, is left alone."""
        handed = self._handed.pop(settled.request_id, None)
        if handed is None:
            return
        flow, done = handed
        for action in flow.handle(settled):
            if isinstance(action, Acknowledge):
                done(None)  # the caller's commit holds it
            elif isinstance(action, Store):
                # The reply, or a checkpoint joined to it and not stored.
                self._store_reply(settled.request_id, action.body, None, done, flow)

    def _store_reply(
        self,
        request_id: str,
        raw: bytes,
        response: pb.SDKResponse | None,
        done: ReplyDone,
        flow: RequestFlow | None,
    ) -> None:
        try:
            stored = asyncio.ensure_future(self._store.put_reply(request_id, raw))
        except Exception as exc:  # a closed store refuses at once
            done(exc)
            return
        stored.add_done_callback(functools.partial(self._reply_stored, request_id, raw, response, done, flow))

    def _reply_stored(
        self,
        request_id: str,
        raw: bytes,
        response: pb.SDKResponse | None,
        done: ReplyDone,
        flow: RequestFlow | None,
        stored: asyncio.Future[bool],
    ) -> None:
        if stored.cancelled():
            done(asyncio.CancelledError(f"storing reply {request_id} was cancelled"))
            return
        error = stored.exception()
        if error is not None:
            done(error)
            return
        if flow is None:
            self._stored_for_another(request_id, stored.result())
            done(None)
            return
        self._carry_out(flow.handle(ReplyStored(stored.result())), request_id, raw, response, done)

    def _stored_for_another(self, request_id: str, stored: bool) -> None:
        """A reply for a request nobody awaits here was stored (`stored`: by
        this call); the dispatcher may tell the other gateways."""

    def _carry_out(
        self, actions: list[Action], request_id: str, raw: bytes, response: pb.SDKResponse | None, done: ReplyDone
    ) -> None:
        pending = self._pending.get(request_id)
        for action in actions:
            if isinstance(action, Deliver):
                if pending is not None and pending.reply is None:
                    pending.reply = reply_of(raw, response)
                    pending.poke()
            elif isinstance(action, DeliverStored):
                # A reply was stored before this one (e.g. by an earlier
                # process): that one is the answer. The ACK waits for the read.
                self._in_task(self._wake_with_stored(request_id, raw, done), done)
                return
            elif isinstance(action, Acknowledge):
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

    def reply_behind(self, request_id: str) -> bool:
        """Whether the request's reply came while its checkpoint was being
        stored: the worker has returned and waits for neither answer."""
        pending = self._pending.get(request_id)
        return pending is not None and pending.flow.reply_behind
