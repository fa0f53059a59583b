"""The checkpoint API official TypeScript workers call while they run steps.

With its defaults the TypeScript SDK runs a discovery request's steps one
after another in the same request, posting each result to
`POST /v1/checkpoint/{run_id}/async` and going on once it is stored, the way
our worker uses WORKER_CHECKPOINT over its socket. It does so exactly when
the request's `ctx.fn_id` is set, which the executor sets only on requests
that offer checkpoints (`connect/executor/requests.py`). The call names the
request by `request_id` (the connect request id) and `qi_id` (which the
executor sets to the same id); the steps are handed to the run through the
request's `CheckpointReceiver` (see `connect.dispatch.port`), as a WORKER_CHECKPOINT's are.

What each answer makes the SDK do:

* 200: the steps are stored; it runs the next step.
* 409: the request is not in flight (already answered, or the run moved
  on): a stale dispatch, and it stops running the function.
* 422: declined (the run was asked to cancel, the request has stored
  `MAX_CHECKPOINTS_PER_REQUEST` steps, or the run has other work
  outstanding): it tries again a few times (about 1.5 s in all), then ends
  the request with the steps, as without checkpoints.
* 400: not a checkpoint of step results (unreadable, or another opcode).

`/v1/checkpoint` and `/v1/checkpoint/{run_id}/steps` serve the SDK's
synchronous functions (its "durable endpoints", run inside an HTTP handler
rather than by a worker). This platform runs functions on connected workers
only: both answer 501 with that reason, which the SDK raises to the caller.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from connect.dispatch import CheckpointTaken
from protocol.payloads import OP_STEP, OP_STEP_PLANNED, OP_STEP_RUN, Opcode, json_encoder

#: The opcodes a checkpoint may carry: step results, and steps announced before they run.
CHECKPOINT_OPCODES = frozenset({OP_STEP_RUN, OP_STEP, OP_STEP_PLANNED})

SYNC_UNSUPPORTED = (
    "synchronous functions (durable endpoints) are not supported: this platform runs functions "
    "on connected workers; serve the function with connect()"
)


class AsyncCheckpoint(msgspec.Struct):
    """The body of `POST /v1/checkpoint/{run_id}/async` (TypeScript SDK 4.x)."""

    steps: list[Opcode]
    run_id: str = ""
    fn_id: str = ""
    qi_id: str = ""
    request_id: str = ""
    generation_id: int | None = None
    request_started_at: int | None = None
    ts: int | None = None


_decode = msgspec.json.Decoder(AsyncCheckpoint).decode


class CheckpointRejected(ValueError):
    """A body that is not a checkpoint of step results (answered 400)."""


class CheckpointSink(Protocol):
    async def checkpoint_over_http(self, run_id: str, request_id: str, body: bytes) -> CheckpointTaken: ...


def parse(run_id: str, body: bytes) -> tuple[str, bytes]:
    """The request id a checkpoint names and its ops as a reply body (a JSON
    array); `CheckpointRejected` with the reason otherwise."""
    try:
        checkpoint = _decode(body)
    except msgspec.DecodeError as exc:
        raise CheckpointRejected(f"not a checkpoint: {exc}") from None
    if checkpoint.run_id and checkpoint.run_id != run_id:
        raise CheckpointRejected(f"the body names run {checkpoint.run_id!r}, the path run {run_id!r}")
    request_id = checkpoint.request_id or checkpoint.qi_id
    if not request_id:
        raise CheckpointRejected("the checkpoint names no request: send request_id or qi_id")
    if not checkpoint.steps:
        raise CheckpointRejected("the checkpoint has no steps")
    for op in checkpoint.steps:
        if op.op not in CHECKPOINT_OPCODES:
            raise CheckpointRejected(f"cannot checkpoint opcode {op.op}: only step results (StepRun) are")
    return request_id, json_encoder.encode(checkpoint.steps)


def answer(taken: CheckpointTaken) -> tuple[int, str]:
    """The HTTP status and message for what became of a checkpoint."""
    if taken is CheckpointTaken.STORED:
        return 200, "stored"
    if taken is CheckpointTaken.STALE:
        return 409, "stale dispatch: the request is not in flight (answered, or the run moved on)"
    return 422, "checkpoint declined: end the request with these steps"
