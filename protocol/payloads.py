"""JSON payloads carried inside connect frames and the event API.

These are the executor ⇄ SDK shapes (request body, opcodes, errors, events,
function configs). They are validated at the edge with msgspec and passed
around as typed structs, never as loose dicts.

Field names follow the wire exactly (snake_case where the official SDK sends
snake_case, camelCase where it sends camelCase), so encoding a struct yields
the bytes an official SDK expects.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final, Literal

import msgspec

# --- events ---------------------------------------------------------------


class Event(msgspec.Struct):
    """One event as stored and as sent to SDKs (`ts` in Unix milliseconds)."""

    name: str
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    id: str = ""
    ts: int = 0
    user: dict[str, Any] = msgspec.field(default_factory=dict)


class IncomingEvent(msgspec.Struct):
    """An event as posted to `/e/{key}`: only `name` is required."""

    name: str
    data: dict[str, Any] | None = None
    id: str | None = None
    ts: int | None = None
    user: dict[str, Any] | None = None
    v: str | None = None


# --- execution request (executor -> SDK) -------------------------------------


class RequestStack(msgspec.Struct):
    stack: list[str] = msgspec.field(default_factory=list)
    current: int = 0


class RequestContext(msgspec.Struct):
    run_id: str
    attempt: int
    disable_immediate_execution: bool = False
    use_api: bool = False
    stack: RequestStack = msgspec.field(default_factory=RequestStack)
    fn_id: str = ""
    step_id: str = "step"
    max_attempts: int | None = None
    env: str = ""
    #: This platform's extension (official SDKs ignore it): the worker may
    #: store each `step.run` result with WORKER_CHECKPOINT and go on to the
    #: next step in the same request.
    checkpoint_steps: bool = False
    #: The queue item the request runs for; the TypeScript SDK sends it back
    #: with `POST /v1/checkpoint/{run_id}/async`. Set, like `fn_id`, only on
    #: requests that offer checkpoints: the SDK checkpoints when `fn_id` is set.
    qi_id: str = ""


class ExecutorRequest(msgspec.Struct):
    """The JSON body of one call request; identical over HTTP and connect."""

    event: Event
    events: list[Event]
    steps: dict[str, Any]
    ctx: RequestContext
    use_api: bool = False
    version: int = 2


# --- SDK response (SDK -> executor) ---------------------------------------------

# Opcode names (the `op` field of a 206 / NOT_COMPLETED body).
OP_STEP_RUN: Final = "StepRun"
OP_STEP: Final = "Step"
OP_STEP_PLANNED: Final = "StepPlanned"
OP_STEP_ERROR: Final = "StepError"
OP_STEP_FAILED: Final = "StepFailed"
OP_SLEEP: Final = "Sleep"
OP_WAIT_FOR_EVENT: Final = "WaitForEvent"
OP_INVOKE_FUNCTION: Final = "InvokeFunction"
OP_AI_GATEWAY: Final = "AIGateway"
OP_NONE: Final = "None"
#: The handler returned; `data` is its result (the TypeScript SDK with checkpointing).
OP_RUN_COMPLETE: Final = "RunComplete"


class ErrorInfo(msgspec.Struct, omit_defaults=False):
    """An error as SDKs report it: `{name, message, stack?, code?}`."""

    name: str = "Error"
    message: str = ""
    stack: str | None = None
    code: str | None = None


class Userland(msgspec.Struct):
    id: str
    index: int | None = None


class Opcode(msgspec.Struct):
    """One reported step: the elements of a NOT_COMPLETED body array."""

    op: str
    id: str
    name: str = ""
    displayName: str = ""  # noqa: N815 - wire name
    opts: dict[str, Any] | None = None
    userland: Userland | None = None
    data: Any = None
    error: ErrorInfo | None = None


# SDKResponse.status values (also in connect_pb2.SDKResponseStatus).
STATUS_NOT_COMPLETED: Final = 0
STATUS_DONE: Final = 1
STATUS_ERROR: Final = 2

SDKStatus = Literal[0, 1, 2]


# --- function configuration (sync) --------------------------------------------


class Retries(msgspec.Struct):
    attempts: int


class Runtime(msgspec.Struct):
    type: str
    url: str


class StepConfig(msgspec.Struct):
    id: str
    name: str
    runtime: Runtime
    retries: Retries | None = None


class Trigger(msgspec.Struct, omit_defaults=True):
    event: str | None = None
    expression: str | None = None
    cron: str | None = None
    jitter: str | None = None


class FunctionConfig(msgspec.Struct, omit_defaults=True):
    """A function as an SDK registers it (connect: inside WORKER_CONNECT)."""

    id: str
    name: str
    triggers: list[Trigger]
    steps: dict[str, StepConfig]
    cancel: list[dict[str, Any]] | None = None
    concurrency: list[dict[str, Any]] | None = None
    timeouts: dict[str, Any] | None = None

    @property
    def retries(self) -> int | None:
        step = self.steps.get("step")
        if step is None or step.retries is None:
            return None
        return step.retries.attempts


# --- step ids -------------------------------------------------------------------


def hash_step_id(user_id: str, occurrence: int = 0) -> str:
    """The hashed step id the official SDKs use.

    The first use of an id hashes it as is; the n-th repeated use (n >= 1)
    hashes `"{id}:{n}"`. SHA-1, lowercase hex.
    """
    raw = user_id if occurrence == 0 else f"{user_id}:{occurrence}"
    return hashlib.sha1(raw.encode()).hexdigest()  # noqa: S324 - wire format, not security


json_encoder: Final = msgspec.json.Encoder()
