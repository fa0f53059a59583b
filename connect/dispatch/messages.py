"""What crosses the executor⇄gateway port: plain data, so it can cross a
process boundary as well as a function call.

Executor to gateway: `StepRequest` (through `Port.dispatch`), then, through
`Port.send`, `CheckpointJoined` / `CheckpointDecided` for each checkpoint it
was offered and `ReplySettled` for each reply it was given. Gateway to
executor: `CheckpointOffered` (to the request's `CheckpointReceiver`) and
the `StepReply` that `dispatch` returns, or a typed failure
(`connect.dispatch.failures`).

The order these may come in for one request is `RequestFlow`'s
(`connect.dispatch.flow`).
"""

from __future__ import annotations

import enum

import msgspec


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
    #: sends `ReplySettled(committed=True)` after that commit.
    #: `committed=False` (the caller did not commit it) makes the dispatcher
    #: store it itself first.
    takes_over: bool = False
    #: The payload offers checkpoints (`ctx.checkpoint_steps`): each
    #: WORKER_CHECKPOINT for this request (and each checkpoint an official
    #: TypeScript worker posts for it over HTTP) is offered to the request's
    #: `CheckpointReceiver` as a `CheckpointOffered` while `dispatch` waits,
    #: and the worker goes on to its next step in the same request once the
    #: caller answers `CheckpointDecided(stored=True)`.
    offers_checkpoints: bool = False


class StepReply(msgspec.Struct, frozen=True):
    """What the worker answered (the essentials of a protobuf SDKResponse)."""

    request_id: str
    status: int  # protocol.payloads.STATUS_* (NOT_COMPLETED=0, DONE=1, ERROR=2)
    body: bytes
    no_retry: bool = False
    retry_after: str | None = None
    sdk_version: str = ""
    request_version: int = 0


class CheckpointOffered(msgspec.Struct, frozen=True):
    """Steps a worker ran in request `request_id` (`reply`: StepRun ops),
    going on once they are stored.

    `joinable`: the request's reply came right behind the checkpoint (the
    handler returned after that step) and the caller commits replies itself
    (`takes_over`). The caller may then store the step with the reply, in
    the one commit that handles the reply: it sends `CheckpointJoined` once
    it has taken the step (the reply is handed over at once) and later
    `CheckpointDecided` with that commit's outcome, before it settles the
    reply. Otherwise it answers `CheckpointDecided` once the step is stored,
    or is not."""

    request_id: str
    reply: StepReply
    joinable: bool = False


class CheckpointJoined(msgspec.Struct, frozen=True):
    """The caller took the checkpoint to store it with the reply behind it."""

    request_id: str


class CheckpointDecided(msgspec.Struct, frozen=True):
    """Whether the offered checkpoint's steps are durably stored. Exactly one
    per offer; without one the offer counts as refused."""

    request_id: str
    stored: bool


class ReplySettled(msgspec.Struct, frozen=True):
    """Whether the caller's commit made a reply of a `takes_over` request
    durable. Sent for every reply the caller was given; the dispatcher
    ignores it for replies it stored itself, and repeats."""

    request_id: str
    committed: bool


#: What the executor sends through `Port.send`.
ExecutorMessage = CheckpointJoined | CheckpointDecided | ReplySettled


class CheckpointTaken(enum.Enum):
    """What became of steps a worker checkpointed over HTTP (see `connect/api/checkpoints.py`)."""

    #: Durably stored: the worker goes on to its next step.
    STORED = "stored"
    #: The request is not in flight here (answered, or the run moved on): the worker must stop.
    STALE = "stale"
    #: Not taken now: the worker ends the request with the steps, as without checkpoints.
    DECLINED = "declined"
