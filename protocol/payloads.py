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
from collections.abc import Callable, Iterator
from typing import Any, Final, Literal

import msgspec

from protocol.flow import flow_problem

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

#: `opts.type` of a `StepRun` that is a `step.send_event` / `step.sendEvent`
#: (the TypeScript SDK's, which this platform's SDK sends too).
STEP_TYPE_SEND_EVENT: Final = "step.sendEvent"


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
    #: When the step's body ran, on the worker's clock, as Go's `interval.Interval`:
    #: `{"a": start in Unix ns, "b": duration in ns}`. The TypeScript SDK and this
    #: platform's send it with a step result; the official Python SDK sends none.
    #: Left out when unset, and read leniently (`connect.executor.step_infos`):
    #: a value of another shape is ignored, never a reason to refuse the reply.
    timing: Any = msgspec.UNSET


# SDKResponse.status values (also in connect_pb2.SDKResponseStatus).
STATUS_NOT_COMPLETED: Final = 0
STATUS_DONE: Final = 1
STATUS_ERROR: Final = 2

SDKStatus = Literal[0, 1, 2]


# --- function configuration (sync) --------------------------------------------
#
# What the official SDKs register (TypeScript v4 `functionConfigSchema` and
# `InngestFunction.getConfig`; Python `server_lib/registration.py`), field by
# field. Durations arrive as strings such as "30s" or "1h" (both SDKs turn
# numbers and timedeltas into that form before sending). Python sends every
# field, `null` when unset; TypeScript leaves unset ones out.


class Retries(msgspec.Struct, omit_defaults=True):
    attempts: int | None = None


class Runtime(msgspec.Struct):
    type: str
    url: str


class StepConfig(msgspec.Struct, omit_defaults=True):
    id: str
    name: str
    runtime: Runtime
    retries: Retries | None = None


class Trigger(msgspec.Struct, omit_defaults=True):
    event: str | None = None
    expression: str | None = None
    cron: str | None = None
    jitter: str | None = None


class CancelConfig(msgspec.Struct, omit_defaults=True):
    """`cancelOn`: an event named `event` for which `if` holds, within `timeout`."""

    event: str
    if_: str | None = msgspec.field(default=None, name="if")
    timeout: str | None = None


class TimeoutsConfig(msgspec.Struct, omit_defaults=True):
    start: str | None = None
    finish: str | None = None


ConcurrencyScope = Literal["fn", "env", "account"]


class ConcurrencyLimit(msgspec.Struct, omit_defaults=True):
    """At most `limit` steps running at once, per value of `key` if given, over `scope`."""

    limit: int
    key: str | None = None
    scope: ConcurrencyScope | None = None


class RateLimitConfig(msgspec.Struct, omit_defaults=True):
    """At most `limit` runs started per `period` (per `key`); the rest are dropped."""

    limit: int
    period: str
    key: str | None = None


class ThrottleConfig(msgspec.Struct, omit_defaults=True):
    """At most `limit` (+ `burst`) runs started per `period` (per `key`); the rest wait."""

    limit: int
    period: str
    key: str | None = None
    burst: int | None = None


class DebounceConfig(msgspec.Struct, omit_defaults=True):
    """Start one run with the last event once `period` passed without another (at most `timeout`)."""

    period: str
    key: str | None = None
    timeout: str | None = None


class BatchEventsConfig(msgspec.Struct, omit_defaults=True):
    """Start one run with up to `maxSize` events, or whatever came within `timeout`."""

    maxSize: int  # noqa: N815 - wire name
    timeout: str | None = None
    key: str | None = None
    if_: str | None = msgspec.field(default=None, name="if")


class PriorityConfig(msgspec.Struct, omit_defaults=True):
    """`run`: an expression giving seconds by which a run jumps the queue."""

    run: str | None = None


class SingletonConfig(msgspec.Struct, omit_defaults=True):
    """One run at a time (per `key`): a new one is skipped or cancels the running one."""

    mode: Literal["skip", "cancel"]
    key: str | None = None


class FunctionConfig(msgspec.Struct, omit_defaults=True):
    """A function as an SDK registers it (connect: inside WORKER_CONNECT).

    `concurrency` keeps the form the SDK sent (TypeScript: a number, an
    object or an array of one or two objects; Python: an array);
    `concurrency_limits` is the same as a list. `decode_functions` refuses a
    config whose flow control is out of its bounds (`protocol.flow`), so a
    served config's options hold them."""

    id: str
    triggers: list[Trigger]
    steps: dict[str, StepConfig]
    name: str | None = None
    cancel: list[CancelConfig] | None = None
    timeouts: TimeoutsConfig | None = None
    concurrency: int | ConcurrencyLimit | list[ConcurrencyLimit] | None = None
    rateLimit: RateLimitConfig | None = None  # noqa: N815 - wire name
    throttle: ThrottleConfig | None = None
    debounce: DebounceConfig | None = None
    batchEvents: BatchEventsConfig | None = None  # noqa: N815 - wire name
    idempotency: str | None = None
    priority: PriorityConfig | None = None
    singleton: SingletonConfig | None = None

    @property
    def retries(self) -> int | None:
        step = self.steps.get("step")
        if step is None or step.retries is None:
            return None
        return step.retries.attempts

    @property
    def concurrency_limits(self) -> list[ConcurrencyLimit]:
        """`concurrency` in its array form (a bare number is a limit over the function)."""
        value = self.concurrency
        if value is None:
            return []
        if isinstance(value, int):
            return [ConcurrencyLimit(limit=value, scope="fn")]
        if isinstance(value, ConcurrencyLimit):
            return [value]
        return list(value)


#: Every top-level field an official SDK registers, by its wire name.
FUNCTION_FIELDS: Final = frozenset(f.encode_name for f in msgspec.structs.fields(FunctionConfig))


class RefusedFunction(msgspec.Struct, frozen=True):
    """A function an SDK registered that is not served, and why."""

    id: str
    reason: str
    name: str | None = None


class DecodedFunctions(msgspec.Struct, frozen=True):
    """One app's functions, decoded one by one.

    `unknown_fields` names, per function id, top-level fields with a value
    that no official SDK version this platform knows sends: kept out of the
    config, and reported rather than silently dropped."""

    functions: list[FunctionConfig]
    refused: list[RefusedFunction]
    unknown_fields: dict[str, list[str]]


class FunctionsUnreadable(ValueError):
    """The functions payload as a whole is not a JSON array of objects."""


_raw_functions = msgspec.json.Decoder(list[dict[str, Any]])


def decode_functions(payload: bytes, expression_problem: ExpressionCheck | None = None) -> DecodedFunctions:
    """Decode an app's functions (a JSON array) one by one: a function that
    does not fit the schema is refused with the reason, the others are kept.
    `expression_problem` says why a CEL expression of a config is invalid
    (None: valid); without it expressions are not checked here.
    Raises FunctionsUnreadable when the payload is not an array of objects."""
    try:
        raws = _raw_functions.decode(payload or b"[]")
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise FunctionsUnreadable(f"functions are not a JSON array of objects: {exc}") from None
    functions: list[FunctionConfig] = []
    refused: list[RefusedFunction] = []
    unknown: dict[str, list[str]] = {}
    seen: set[str] = set()
    for index, raw in enumerate(raws):
        fn_id = raw.get("id")
        label = fn_id if isinstance(fn_id, str) and fn_id else f"functions[{index}]"
        name = raw.get("name") if isinstance(raw.get("name"), str) else None
        try:
            fn = msgspec.convert(raw, FunctionConfig)
        except msgspec.ValidationError as exc:
            refused.append(RefusedFunction(label, f"invalid config: {exc}", name))
            continue
        problem = _config_problem(fn, seen, expression_problem)
        if problem is not None:
            refused.append(RefusedFunction(label, problem, name))
            continue
        seen.add(fn.id)
        functions.append(fn)
        extra = sorted(k for k, v in raw.items() if k not in FUNCTION_FIELDS and v is not None)
        if extra:
            unknown[fn.id] = extra
    return DecodedFunctions(functions, refused, unknown)


def _config_problem(fn: FunctionConfig, seen: set[str], expression_problem: ExpressionCheck | None) -> str | None:
    """What makes a config that fits the schema unusable, or None."""
    if not fn.id:
        return "invalid config: `id` is empty"
    if fn.id in seen:
        return f"invalid config: another function of the app has the id {fn.id!r}"
    for i, trigger in enumerate(fn.triggers):
        if (trigger.event is None) == (trigger.cron is None):
            return f"invalid config: `triggers[{i}]` needs exactly one of `event` and `cron`"
    if expression_problem is not None:
        for where, text in config_expressions(fn):
            problem = expression_problem(text)
            if problem is not None:
                return f"invalid config: `{where}` {problem}, got {text!r}"
    return flow_problem(fn)


#: Why a CEL expression is invalid, or None (see `decode_functions`).
ExpressionCheck = Callable[[str], str | None]


def config_expressions(fn: FunctionConfig) -> Iterator[tuple[str, str]]:
    """Every CEL expression of `fn`, with where it is (wire names): trigger
    filters, cancel conditions and flow-control keys, `if` and `priority.run`."""
    for i, trigger in enumerate(fn.triggers):
        if trigger.expression:
            yield f"triggers[{i}].expression", trigger.expression
    for i, cancel in enumerate(fn.cancel or ()):
        if cancel.if_:
            yield f"cancel[{i}].if", cancel.if_
    for i, limit in enumerate(fn.concurrency_limits):
        if limit.key:
            yield f"concurrency[{i}].key", limit.key
    for name, option in (
        ("rateLimit", fn.rateLimit),
        ("throttle", fn.throttle),
        ("debounce", fn.debounce),
        ("batchEvents", fn.batchEvents),
        ("singleton", fn.singleton),
    ):
        key = getattr(option, "key", None)
        if key:
            yield f"{name}.key", key
    if fn.batchEvents is not None and fn.batchEvents.if_:
        yield "batchEvents.if", fn.batchEvents.if_
    if fn.idempotency:
        yield "idempotency", fn.idempotency
    if fn.priority is not None and fn.priority.run:
        yield "priority.run", fn.priority.run


# --- step ids -------------------------------------------------------------------


def hash_step_id(user_id: str, occurrence: int = 0) -> str:
    """The hashed step id the official SDKs use.

    The first use of an id hashes it as is; the n-th repeated use (n >= 1)
    hashes `"{id}:{n}"`. SHA-1, lowercase hex.
    """
    raw = user_id if occurrence == 0 else f"{user_id}:{occurrence}"
    return hashlib.sha1(raw.encode()).hexdigest()  # noqa: S324 - wire format, not security


json_encoder: Final = msgspec.json.Encoder()
