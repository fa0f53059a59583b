"""What the gateway keeps of one request it dispatched and awaits, and how
replies are read off the wire."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from connect.dispatch import CheckpointReceiver, StepReply
from connect.dispatch.flow import RequestFlow
from connect.dispatch.stored import reply_from_bytes, reply_from_message
from protocol import connect_pb2 as pb

log = logging.getLogger("connect.gateway")

#: Told how storing a reply ended: None once it is durable, else the error.
ReplyDone = Callable[[BaseException | None], None]


class InFlight:
    """One request this process dispatched and awaits.

    `flow` decides what happens to what its worker sends (see
    `connect.dispatch.flow`). `wake` is the one future its `dispatch` sleeps
    on; anything that may change the outcome resolves it (a reply, a failed
    ACK, a shortened lease, the lease timer) and `dispatch` looks again.
    A successful ACK only records itself: it needs no wake-up."""

    __slots__ = ("awaiting", "checkpointing", "decision", "flow", "receiver", "reply", "run_id", "wake")

    def __init__(
        self,
        wake: asyncio.Future[None],
        takes_over: bool,
        receiver: CheckpointReceiver | None,
        run_id: str = "",
    ) -> None:
        self.wake = wake
        self.run_id = run_id
        self.receiver = receiver
        self.flow = RequestFlow(takes_over=takes_over, offers_checkpoints=receiver is not None)
        # Set while a checkpoint is with the executor; resolved once it is decided
        # (the replies the flow holds meanwhile wait on it).
        self.checkpointing: asyncio.Future[None] | None = None
        # The executor's answer to that checkpoint (`CheckpointDecided.stored`).
        self.decision: asyncio.Future[bool] | None = None
        # The reply that answers `dispatch` (handed over, or stored).
        self.reply: StepReply | None = None
        # Set while `dispatch` waits for a worker's reply: the lease watchdog looks at it.
        self.awaiting = False

    def poke(self) -> None:
        if not self.wake.done():
            self.wake.set_result(None)

    def checkpoint_decided(self) -> None:
        """Let the replies held behind the checkpoint go on."""
        decided, self.checkpointing = self.checkpointing, None
        if decided is not None and not decided.done():
            decided.set_result(None)


def resolve(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    elif isinstance(error, asyncio.CancelledError):
        fut.cancel()
    else:
        fut.set_exception(error)


def answered(loop: asyncio.AbstractEventLoop, answer: bool) -> asyncio.Future[bool]:
    """A future already holding `answer`."""
    fut: asyncio.Future[bool] = loop.create_future()
    fut.set_result(answer)
    return fut


def reply_of(raw: bytes, response: pb.SDKResponse | None) -> StepReply:
    return reply_from_bytes(raw) if response is None else reply_from_message(response)


__all__ = ["InFlight", "ReplyDone", "reply_from_bytes", "reply_from_message", "reply_of", "resolve"]
