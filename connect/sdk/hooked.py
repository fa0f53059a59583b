"""One call request of a function with middleware: its hooks around the handler, in the official SDK's order.

``execution.execute`` hands a request here only when the client or the
function has middleware, so a function without any pays nothing for it. The
order and the handling of hook errors are described in
``connect.sdk.middleware``; this module carries them out. An ``async def``
handler runs its hooks on the event loop; a plain ``def`` one runs the whole
request, hooks included, in one worker thread, as its steps do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from connect.sdk import errors
from connect.sdk.client import Client
from connect.sdk.context import Context, ContextSync
from connect.sdk.execution import (
    Invocation,
    Outcome,
    _bind,
    _call_async,
    _call_sync,
    _context,
    _failure_outcome,
    _from_ending,
    _from_exception,
    _from_return,
    _Raised,
    _Result,
    _Unwound,
)
from connect.sdk.function import Function
from connect.sdk.middleware import (
    EMPTY,
    Chain,
    StepMemos,
    TransformOutputResult,
    TransformOutputStepInfo,
    opcode_kind,
)
from connect.sdk.replay import Failure, Replay, Report
from connect.sdk.serializer import NO_OUTPUT_TYPE
from protocol.payloads import ExecutorRequest


class EndingError(errors.SDKError):
    """How a request the SDK itself ended (a step found when another was
    targeted, ...) shows to ``transform_output``: ``result.error``."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.error.message)
        self.failure = failure
        self.code = failure.error.code or errors.CODE_UNKNOWN


@dataclass
class _Pending:
    """The request's outcome before ``transform_output``: the handler's value,
    a function-level error, or the ending the replay recorded."""

    value: Any = EMPTY
    error: Exception | None = None
    ending: Report | Failure | None = None
    #: The exception the reported step's body raised, if it did.
    raised: Exception | None = None


async def run(
    client: Client,
    fn: Function,
    request: ExecutorRequest,
    invocation: Invocation,
    target: str | None,
) -> Outcome:
    """Run the request with the client's and the function's middleware (never checkpoints)."""
    chain = Chain(client, invocation, [*client.middleware, *fn.middleware])
    steps = StepMemos.from_raw(request.steps)
    # `transform_input` sees the context with its step tools; they are bound
    # again to the memos as the hooks leave them (`_handle`).
    ctx = _context(client, fn, request, invocation, _replay(request, target, steps, chain))
    if isinstance(ctx, ContextSync):
        return await anyio.to_thread.run_sync(
            _run_sync, chain, client, fn, request, ctx, target, steps, abandon_on_cancel=True
        )
    pending = await _handle(chain, client, fn, request, ctx, target, steps)
    shown = _output_result(pending)
    if shown is not None:
        err = await chain.transform_output(shown.result)
        if err is not None:
            return _from_exception(client, fn, err)
    outcome = _outcome(client, fn, pending, shown)
    err = await chain.before_response()
    if err is not None:
        return _from_exception(client, fn, err)
    return outcome


async def _handle(
    chain: Chain,
    client: Client,
    fn: Function,
    request: ExecutorRequest,
    ctx: Context,
    target: str | None,
    steps: StepMemos,
) -> _Pending:
    err = await chain.transform_input(ctx, fn, steps)
    if err is not None:
        return _Pending(error=err)
    replay = _replay(request, target, steps, chain)
    _bind(ctx, client, replay)
    if steps.size == 0:
        err = await chain.before_execution()
        if err is not None:
            return _Pending(error=err)
    result = await _call_async(fn, ctx)
    pending = _pending(client, fn, replay, result)
    if pending.error is None and not isinstance(pending.ending, Failure):
        err = await chain.after_execution()
        if err is not None:
            return _Pending(error=err)
    return pending


def _run_sync(
    chain: Chain,
    client: Client,
    fn: Function,
    request: ExecutorRequest,
    ctx: ContextSync,
    target: str | None,
    steps: StepMemos,
) -> Outcome:
    pending = _handle_sync(chain, client, fn, request, ctx, target, steps)
    shown = _output_result(pending)
    if shown is not None:
        err = chain.transform_output_sync(shown.result)
        if err is not None:
            return _from_exception(client, fn, err)
    outcome = _outcome(client, fn, pending, shown)
    err = chain.before_response_sync()
    if err is not None:
        return _from_exception(client, fn, err)
    return outcome


def _handle_sync(
    chain: Chain,
    client: Client,
    fn: Function,
    request: ExecutorRequest,
    ctx: ContextSync,
    target: str | None,
    steps: StepMemos,
) -> _Pending:
    err = chain.transform_input_sync(ctx, fn, steps)
    if err is not None:
        return _Pending(error=err)
    replay = _replay(request, target, steps, chain)
    _bind(ctx, client, replay)
    if steps.size == 0:
        err = chain.before_execution_sync()
        if err is not None:
            return _Pending(error=err)
    result = _call_sync(fn, ctx)
    pending = _pending(client, fn, replay, result)
    if pending.error is None and not isinstance(pending.ending, Failure):
        err = chain.after_execution_sync()
        if err is not None:
            return _Pending(error=err)
    return pending


def _replay(request: ExecutorRequest, target: str | None, steps: StepMemos, chain: Chain) -> Replay:
    replay = Replay(
        steps.to_raw(),
        target=target,
        disable_immediate_execution=request.ctx.disable_immediate_execution,
        attempt=request.ctx.attempt,
        max_attempts=request.ctx.max_attempts,
        run_id=request.ctx.run_id,
        checkpoint=None,
    )
    replay.hooks = chain
    return replay


def _pending(client: Client, fn: Function, replay: Replay, result: _Result) -> _Pending:
    # A recorded ending wins, as in `execution._run`.
    if replay.ending is not None:
        return _Pending(ending=replay.ending, raised=replay.raised)
    if isinstance(result, _Raised):
        return _Pending(error=result.exc)
    if isinstance(result, _Unwound):
        raise RuntimeError("handler unwound without a recorded ending")
    if fn.output_type is NO_OUTPUT_TYPE:
        return _Pending(value=result.value)
    try:  # the declared output type, stored as the serializer writes it (as `execution._run`)
        return _Pending(value=client.serializer.serialize(result.value, fn.output_type))
    except Exception as exc:
        return _Pending(error=exc)


@dataclass
class _Shown:
    """What ``transform_output`` is shown, the one-step report it applies to
    (if any), and the error it was shown, to tell whether a hook replaced it."""

    result: TransformOutputResult
    report: Report | None = None
    error: Exception | None = None


def _output_result(pending: _Pending) -> _Shown | None:
    """``None``: ``transform_output`` is not called (several parallel steps reported at once)."""
    if pending.error is not None:
        return _Shown(TransformOutputResult(error=pending.error, output=EMPTY, step=None), error=pending.error)
    ending = pending.ending
    if isinstance(ending, Failure):
        error: Exception | None = EndingError(ending)
        return _Shown(TransformOutputResult(error=error, output=EMPTY, step=None), error=error)
    if ending is None:
        return _Shown(TransformOutputResult(error=None, output=pending.value, step=None))
    if len(ending.opcodes) != 1:
        return None
    op = ending.opcodes[0]
    kind = opcode_kind(op.op)
    if kind is None:
        return None
    error = None
    if op.error is not None:
        error = pending.raised or errors.StepError(op.error.message, op.error.name, op.error.stack)
    if op.opts is not None:
        op.opts = dict(op.opts)  # hooks may change it in place; it may be a shared constant (SEND_EVENT_OPTS)
    step = TransformOutputStepInfo(id=op.displayName, op=kind, opts=op.opts)
    return _Shown(TransformOutputResult(error=error, output=op.data, step=step), ending, error)


def _outcome(client: Client, fn: Function, pending: _Pending, shown: _Shown | None) -> Outcome:
    """The reply, with what ``transform_output`` left in ``result.output`` and ``result.error``."""
    if shown is None:
        assert pending.ending is not None
        return _from_ending(pending.ending)
    result = shown.result
    output = None if result.output is EMPTY else result.output
    error = result.error
    if shown.report is not None:
        op = shown.report.opcodes[0]
        op.data = output
        if error is not shown.error:  # a hook replaced it
            op.error = None if error is None else errors.describe(error)
        return _from_ending(shown.report)
    if error is None:
        return _from_return(output)
    if isinstance(error, EndingError):
        return _failure_outcome(error.failure)
    return _from_exception(client, fn, error)
