"""The executor's only way to reach workers.

`Dispatcher.dispatch` runs one step request on some connected worker and
returns the worker's reply once it is durably stored. Failures are typed so
the executor can tell "wait for a worker" and "the worker was lost" (no
attempt burnt) from "the step failed" (an attempt burnt).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec

#: Told whether the commit that carried a joined checkpoint's step succeeded.
Stored = Callable[[bool], None]
#: Joins a checkpoint's step to the reply right behind it (see `StepRequest.checkpoint`).
Join = Callable[[], Stored]


class StepRequest(msgspec.Struct, frozen=True):
    """One call request for one run.

    `request_id` is chosen (and persisted) by the executor before it calls
    `dispatch`, so a restarted executor presenting the same id picks up a
    reply or a live lease left over from before the restart.
    """

    request_id: str
    run_id: str
    app_name: str
    function_slug: str  # fully qualified: "<app_id>-<fn_id>"
    step_id: str  # "step" for discovery, else a hashed step id
    payload: bytes  # the JSON ExecutorRequest body
    job_id: str = ""
    #: True when `request_id` was just created and never dispatched before:
    #: no stored reply or lease can exist, so the dispatcher skips looking.
    fresh: bool = False
    #: True when the caller makes the reply durable in its own next commit
    #: (the executor, storing the step's memo): the reply is returned before
    #: it is stored, and the worker is acknowledged only once the caller
    #: calls `StepReply.settle(True)` after that commit. `settle(False)` (the
    #: caller did not commit it) makes the dispatcher store it itself first.
    takes_over: bool = False
    #: Set when the payload offers checkpoints (`ctx.checkpoint_steps`): each
    #: WORKER_CHECKPOINT for this request (and each checkpoint an official
    #: TypeScript worker posts for it over HTTP) is handed to it, as a
    #: `StepReply` of StepRun ops, while `dispatch` still waits. It returns True
    #: once the step is durably stored, which lets the worker go on to the
    #: next step in the same request; False ends the request with the step.
    #:
    #: The second argument is None unless the request's reply came right
    #: behind the checkpoint (the handler returned after that step). Then the
    #: caller may store the step with the reply instead, in the one commit
    #: that handles the reply: it calls `join()` once it has taken the step
    #: (the reply is handed over at once) and later calls the `Stored` that
    #: `join()` returns, exactly once, with that commit's outcome, before it
    #: settles the reply. What it returns is then ignored: the answer is the
    #: commit's. Not calling `join()` stores the step first, as without a
    #: reply behind it.
    checkpoint: Callable[[StepReply, Join | None], Awaitable[bool]] | None = None


class StepReply(msgspec.Struct, frozen=True):
    """What the worker answered (the essentials of a protobuf SDKResponse)."""

    request_id: str
    status: int  # protocol.payloads.STATUS_* (NOT_COMPLETED=0, DONE=1, ERROR=2)
    body: bytes
    no_retry: bool = False
    retry_after: str | None = None
    sdk_version: str = ""
    request_version: int = 0
    #: Set on replies handed over to a `takes_over` caller (see `StepRequest`).
    on_settle: Callable[[bool], None] | None = None

    def settle(self, committed: bool) -> None:
        """Tell the dispatcher whether the caller's commit made this reply
        durable. Only replies of `takes_over` requests need it; repeated calls
        are ignored."""
        if self.on_settle is not None:
            self.on_settle(committed)


class CheckpointTaken(enum.Enum):
    """What became of steps a worker checkpointed over HTTP (see `connect/api/checkpoints.py`)."""

    #: Durably stored: the worker goes on to its next step.
    STORED = "stored"
    #: The request is not in flight here (answered, or the run moved on): the worker must stop.
    STALE = "stale"
    #: Not taken now: the worker ends the request with the steps, as without checkpoints.
    DECLINED = "declined"


class DispatchError(Exception):
    """Base of the typed dispatch failures; `code` is a stable syscode."""

    code = "connect_dispatch_failed"


class NoWorker(DispatchError):
    """No ready connection serves this app and function. Wait; no attempt burnt."""

    code = "connect_no_healthy_connection"


class AtCapacity(DispatchError):
    """Every suitable worker is at its max_worker_concurrency. Wait; no attempt burnt."""

    code = "connect_all_workers_at_capacity"


class WorkerStoppedResponding(DispatchError):
    """The request's lease lapsed before a reply was stored: its worker was
    lost (killed, cut off, or gone silent). Not the step's failure: the
    executor dispatches the same request again without spending an attempt,
    a bounded number of times (`max_lease_lapses`)."""

    code = "connect_worker_stopped_responding"


class Dispatcher(Protocol):
    async def dispatch(self, request: StepRequest) -> StepReply:
        """Run `request` on a worker and return its stored reply.

        Order: a reply already stored for `request.request_id` is returned at
        once; a live lease on it means a worker still runs it, so wait for
        that; otherwise route, forward and wait. Raises NoWorker, AtCapacity
        or WorkerStoppedResponding.
        """
        ...

    async def wait_for_worker(self, app_name: str, function_slug: str, timeout: float) -> None:
        """Return when a connection for this function may have free capacity
        (a connect, a ready, a released slot), or after `timeout` seconds."""
        ...
