"""What crosses the executor⇄gateway port: one step request, its reply,
and what became of checkpoints.

The flow of one request (acknowledgement, checkpoints offered and decided,
the reply and its settlement) is decided by `connect.dispatch.flow.RequestFlow`.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable

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
