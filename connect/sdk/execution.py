"""Execute one call request: the entry point a worker calls for each executor request.

``execute`` never raises for anything a request or user code can do: every
problem becomes an ``Outcome`` with status ERROR. Only cancellation (and other
``BaseException``s such as ``KeyboardInterrupt``) propagates.

Status mapping (the HTTP serve equivalents in brackets):
DONE [200] body = the handler's return value as JSON;
NOT_COMPLETED [206] body = JSON array with the one reported step op;
ERROR [500] body = ``{"code", "message", "name", "stack"?}``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import anyio.to_thread
import msgspec

from connect.sdk import errors
from connect.sdk.client import Client
from connect.sdk.context import Context, ContextSync
from connect.sdk.durations import to_iso_utc
from connect.sdk.function import ROOT_STEP_ID, Function, resolve
from connect.sdk.group import Group, GroupSync
from connect.sdk.replay import Ending, Failure, Replay, RequestEnded
from connect.sdk.serializer import NO_OUTPUT_TYPE, json_default
from connect.sdk.step import Step, StepSync
from connect.sdk.version import REQUEST_VERSION, SDK_VERSION
from protocol.payloads import (
    STATUS_DONE,
    STATUS_ERROR,
    STATUS_NOT_COMPLETED,
    ErrorInfo,
    ExecutorRequest,
    Opcode,
)

__all__ = ["SDK_VERSION", "Invocation", "Outcome", "execute"]

_request_decoder: Final = msgspec.json.Decoder(ExecutorRequest)


@dataclass(frozen=True)
class Invocation:
    """One call request as the transport delivered it."""

    request_payload: bytes  # JSON ExecutorRequest
    function_slug: str  # FQ id "<app_id>-<fn_id>"
    step_id: str  # "step" or a hashed step id
    request_id: str = ""
    job_id: str = ""
    #: Sends one StepRun op as a checkpoint before it returns; the future it
    #: returns answers True once the platform stored it. The handler may
    #: return before that answer, and the transport then sends the reply right
    #: behind the checkpoint (see ``connect.sdk.replay``). None: the transport
    #: cannot; used only when the request offers checkpoints.
    checkpoint: Callable[[Opcode], asyncio.Future[bool]] | None = None


@dataclass(frozen=True)
class Outcome:
    """The SDK's reply to one call request."""

    status: int  # STATUS_DONE / STATUS_NOT_COMPLETED / STATUS_ERROR
    body: bytes
    no_retry: bool = False
    retry_after: str | None = None  # ISO-8601 UTC with ms
    request_version: int = REQUEST_VERSION
    #: The exception the function raised, when it raised one (never sent; for
    #: ``connect.sdk.testing`` and logs).
    exception: Exception | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class _Returned:
    value: Any


@dataclass(frozen=True)
class _Raised:
    exc: Exception


@dataclass(frozen=True)
class _Unwound:
    """The handler was unwound by ``RequestEnded``; the replay holds the ending."""


_Result = _Returned | _Raised | _Unwound


async def execute(client: Client, functions: Mapping[str, Function], invocation: Invocation) -> Outcome:
    """Run the function named by ``invocation`` against its request; never raises (see module doc).

    ``functions`` is keyed by fully-qualified id (a ``<id>-failure`` slug runs
    that function's ``on_failure`` handler). An ``async def`` handler runs
    on the calling event loop; a plain ``def`` handler runs in a worker thread
    (anyio's default limiter) so it cannot block the loop. If the caller is
    cancelled while a sync handler runs, the thread is abandoned: it finishes
    on its own and its result is dropped.
    """
    fn = resolve(functions, invocation.function_slug)
    if fn is None:
        return _early_error(
            errors.CODE_FUNCTION_NOT_FOUND,
            "FunctionNotFoundError",
            f"function {invocation.function_slug!r} is not served by this worker "
            f"(it serves: {', '.join(sorted(functions)) or 'nothing'})",
        )
    try:
        request = _request_decoder.decode(invocation.request_payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return _early_error(errors.CODE_BODY_INVALID, "ValidationError", f"invalid request payload: {exc}")
    if request.use_api:
        return _early_error(
            errors.CODE_BODY_INVALID,
            "ValidationError",
            "request has use_api=true (state must be fetched from the API), which this SDK does not support",
        )
    try:
        return await _run(client, fn, request, invocation)
    except Exception as exc:  # a bug in the SDK itself; still answer the executor
        client.logger.exception("internal error while executing %s", invocation.function_slug)
        return _early_error(errors.CODE_UNKNOWN, type(exc).__name__, f"internal error: {exc}")


async def _run(client: Client, fn: Function, request: ExecutorRequest, invocation: Invocation) -> Outcome:
    # An empty step id is treated as discovery: targeting a step nobody has
    # would only make every new step fail with step_unexpected.
    target = None if invocation.step_id in (ROOT_STEP_ID, "") else invocation.step_id
    if client.middleware or fn.middleware:
        from connect.sdk import hooked  # imports this module's helpers

        return await hooked.run(client, fn, request, invocation, target)
    checkpoint = invocation.checkpoint if request.ctx.checkpoint_steps else None
    made: list[Context | ContextSync] = []  # the context, once made, for the checkpoint to reset
    replay = Replay(
        request.steps,
        target=target,
        disable_immediate_execution=request.ctx.disable_immediate_execution,
        attempt=request.ctx.attempt,
        max_attempts=request.ctx.max_attempts,
        run_id=request.ctx.run_id,
        checkpoint=None if checkpoint is None else _resetting_attempt(checkpoint, made),
    )
    ctx = _context(client, fn, request, invocation, replay)
    made.append(ctx)
    if isinstance(ctx, Context):
        result = await _call_async(fn, ctx)
    else:
        result = await anyio.to_thread.run_sync(_call_sync, fn, ctx, abandon_on_cancel=True)
    # A recorded ending wins even if user code swallowed RequestEnded and
    # returned or raised something else afterwards.
    if replay.ending is not None:
        return _from_ending(replay.ending)
    if isinstance(result, _Raised):
        return _from_exception(client, fn, result.exc)
    if isinstance(result, _Unwound):
        raise RuntimeError("handler unwound without a recorded ending")
    if fn.output_type is not NO_OUTPUT_TYPE:
        try:
            return _from_return(client.serializer.serialize(result.value, fn.output_type))
        except Exception as exc:
            return _from_exception(client, fn, exc)
    return _from_return(result.value)


def _context(
    client: Client, fn: Function, request: ExecutorRequest, invocation: Invocation, replay: Replay
) -> Context | ContextSync:
    """The handler's context for one request: ``Context`` for an ``async def``
    handler, ``ContextSync`` for a plain ``def`` one, its step tools over ``replay``."""
    run = (request.event, request.events, request.ctx.run_id, request.ctx.attempt)
    ids = (invocation.request_id, invocation.job_id, client.logger)
    if fn.is_async:
        step = Step(replay, client)
        return Context(*run, *ids, step=step, group=Group(step), function_id=fn.id)
    step_sync = StepSync(replay, client)
    return ContextSync(*run, *ids, step=step_sync, group=GroupSync(step_sync), function_id=fn.id)


def _bind(ctx: Context | ContextSync, client: Client, replay: Replay) -> None:
    """Point ``ctx``'s step tools at ``replay`` (made after middleware rewrote the step memos)."""
    if isinstance(ctx, Context):
        ctx.step = Step(replay, client)
        ctx.group = Group(ctx.step)
    else:
        ctx.step = StepSync(replay, client)
        ctx.group = GroupSync(ctx.step)


def _resetting_attempt(
    checkpoint: Callable[[Opcode], asyncio.Future[bool]], made: list[Context | ContextSync]
) -> Callable[[Opcode], asyncio.Future[bool]]:
    """The checkpoint, resetting ``ctx.attempt``: the code after a checkpointed
    step belongs to the next step, whose attempts start at 0 as in a new
    request (if the checkpoint is refused, that next step never starts here)."""

    def send(op: Opcode) -> asyncio.Future[bool]:
        answer = checkpoint(op)
        for ctx in made:
            ctx.attempt = 0
        return answer

    return send


async def _call_async(fn: Function, ctx: Context) -> _Result:
    try:
        if fn.takes_step:
            return _Returned(await fn.handler(ctx, ctx.step))  # type: ignore[call-arg, arg-type]
        return _Returned(await fn.handler(ctx))  # type: ignore[call-arg, arg-type]
    except RequestEnded:
        return _Unwound()
    except Exception as exc:
        return _Raised(exc)


def _call_sync(fn: Function, ctx: ContextSync) -> _Result:
    try:
        if fn.takes_step:
            return _Returned(fn.handler(ctx, ctx.step))  # type: ignore[call-arg, arg-type]
        return _Returned(fn.handler(ctx))  # type: ignore[call-arg, arg-type]
    except RequestEnded:
        return _Unwound()
    except Exception as exc:
        return _Raised(exc)


def _from_return(value: Any) -> Outcome:
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()
        return _failure_outcome(
            Failure(
                _info(
                    errors.CODE_OUTPUT_UNSERIALIZABLE,
                    "OutputUnserializableError",
                    "the handler returned an awaitable; declare it with `async def` so it is awaited",
                ),
                include_stack=False,
            )
        )
    try:
        body = msgspec.json.encode(value, enc_hook=json_default)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        return _failure_outcome(
            Failure(
                _info(
                    errors.CODE_OUTPUT_UNSERIALIZABLE,
                    "OutputUnserializableError",
                    f"the function returned data that cannot be encoded as JSON: {exc}",
                ),
                include_stack=False,
            )
        )
    return Outcome(status=STATUS_DONE, body=body)


def _from_exception(client: Client, fn: Function, exc: Exception) -> Outcome:
    info = errors.describe(exc)
    if not errors.is_quiet(exc):
        client.logger.error("function %s failed: %s: %s", fn.id, info.code, info.message)
    retry_after = None
    if isinstance(exc, errors.RetryAfterError):
        retry_after = to_iso_utc(exc.retry_after)
    outcome = _failure_outcome(Failure(info, no_retry=not errors.is_retriable(exc), retry_after=retry_after))
    return dataclasses.replace(outcome, exception=exc)


def _from_ending(ending: Ending) -> Outcome:
    if isinstance(ending, Failure):
        return _failure_outcome(ending)
    ops = []
    for opcode in ending.opcodes:
        op = msgspec.to_builtins(opcode)
        if op.get("error") is None:
            op.pop("error", None)  # `error` is present only on error ops
        ops.append(op)
    try:
        body = msgspec.json.encode(ops)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        names = ", ".join(f'"{opcode.displayName}"' for opcode in ending.opcodes)
        return _failure_outcome(
            Failure(
                _info(
                    errors.CODE_OUTPUT_UNSERIALIZABLE,
                    "OutputUnserializableError",
                    f"step {names} reported data that cannot be encoded as JSON: {exc}",
                ),
                include_stack=False,
            )
        )
    return Outcome(status=STATUS_NOT_COMPLETED, body=body, no_retry=ending.no_retry)


def _failure_outcome(failure: Failure) -> Outcome:
    info = failure.error
    body: dict[str, Any] = {"code": info.code or errors.CODE_UNKNOWN, "message": info.message, "name": info.name}
    if failure.include_stack:
        body["stack"] = info.stack
    return Outcome(
        status=STATUS_ERROR,
        body=msgspec.json.encode(body),
        no_retry=failure.no_retry,
        retry_after=failure.retry_after,
    )


def _early_error(code: str, name: str, message: str) -> Outcome:
    """An error found before user code ran: no stack, and retriable like any 500."""
    return _failure_outcome(Failure(_info(code, name, message), include_stack=False))


def _info(code: str, name: str, message: str) -> ErrorInfo:
    return ErrorInfo(name=name, message=message, stack=None, code=code)
