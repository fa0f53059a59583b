"""Middleware: user hooks around each call request, with the classes, hook names and order of the official Python SDK.

A middleware is a class (``Middleware`` for ``async`` hooks, ``MiddlewareSync``
for plain ones) built once per call request with ``(client, raw_request)``,
so state kept on ``self`` lives for one request; a run of five steps builds it
again for each of its requests. ``raw_request`` is the ``Invocation`` the
worker received. A "factory" (any callable taking ``(client, raw_request)``)
may stand in for the class, which is how middleware that takes options is
passed (``EncryptionMiddleware.factory(key)``).

The chain of one request holds the client's middleware, in the order given,
then the function's. Within a request the hooks run as follows ("forward" is
the chain's order, "reverse" the opposite, as for every ``after_*`` hook):

1. ``transform_input(ctx, function, steps)`` forward, before the handler: it
   may rewrite ``ctx`` (``ctx.event.data``, ``ctx.logger``, ...) and the
   stored step results in ``steps`` (``for memo in steps.values(): memo.data = ...``);
2. ``before_execution()`` forward, once, when the request starts running code
   that has not run before: at once if the run has no stored step results,
   otherwise when the last one is handed to the handler;
3. ``after_execution()`` reverse, when the handler returned or stopped at a
   step (not when it raised);
4. ``transform_output(result)`` reverse, with the request's outcome: the
   handler's return value or error (``result.step`` is ``None``), or the one
   step the request reports (``result.step`` says which); not called when the
   request reports several steps of a parallel group at once. Changes to
   ``result.output`` and ``result.error`` are what is sent;
5. ``before_response()`` forward, just before the reply is sent.

``before_send_events(events)`` (forward) and ``after_send_events(result)``
(reverse) run around each send: ``step.send_event`` runs the request's chain,
``client.send`` / ``client.send_sync`` a chain of the client's middleware built
for that send (``raw_request`` is ``None``).

Errors a hook raises are handled as the official SDK handles them: one raised
by ``transform_input``, ``before_execution`` at the start, ``after_execution``,
``transform_output`` or ``before_response`` replaces the request's outcome
with a function-level error (retried like any other, not retried if it is a
``NonRetriableError``); the later hooks still run. One raised by
``before_execution`` when the last stored result is handed over is ignored.
One raised by a send hook is raised where the events are sent (inside
``step.send_event``, that fails the step). An ``async`` middleware in a plain
``def`` function gets ``AsyncUnsupportedError`` as its outcome.

A request whose function has middleware runs one step and replies, as the
official SDK does: it does not checkpoint several steps per request, so every
step result passes through ``transform_output`` before it leaves the worker.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import msgspec

from connect.sdk.errors import SDKError, SendEventsError
from protocol.payloads import Event

if TYPE_CHECKING:
    from connect.sdk.client import Client
    from connect.sdk.context import Context, ContextSync
    from connect.sdk.function import Function

__all__ = [
    "AsyncUnsupportedError",
    "MemoizedError",
    "Middleware",
    "MiddlewareSync",
    "Opcode",
    "Output",
    "SendEventsResult",
    "StepMemos",
    "TransformOutputResult",
    "TransformOutputStepInfo",
    "UninitializedMiddleware",
]


class Opcode(enum.Enum):
    """The kind of step a request reports (``TransformOutputStepInfo.op``), named as in the official SDK."""

    AI_GATEWAY = "AIGateway"
    INVOKE = "InvokeFunction"
    PLANNED = "StepPlanned"
    SLEEP = "Sleep"
    STEP_RUN = "StepRun"
    STEP_ERROR = "StepError"
    WAIT_FOR_EVENT = "WaitForEvent"
    STEP_FAILED = "StepFailed"


_OPCODES: Final = {op.value: op for op in Opcode}


class AsyncUnsupportedError(SDKError):
    """An ``async`` middleware hook was found while running a plain ``def`` function."""

    code = "async_unsupported"


class _Empty:
    """No output (``TransformOutputResult.output`` when the handler raised)."""

    def __repr__(self) -> str:
        return "<empty>"


EMPTY: Final = _Empty()


@dataclasses.dataclass
class MemoizedError:
    """How a step that failed for good was stored."""

    message: str
    name: str
    stack: str | None = None


@dataclasses.dataclass
class Output:
    """One stored step result: ``data``, or the ``error`` it failed with. Both may be reassigned."""

    data: object = None
    error: MemoizedError | None = None


class _OutputShape(msgspec.Struct, forbid_unknown_fields=True):
    data: Any = None
    error: MemoizedError | None = None


class StepMemos:
    """The stored step results a request carries, keyed by hashed step id.

    ``transform_input`` may change each ``Output``'s ``data`` or ``error``; the
    handler's steps then return what it left there.
    """

    def __init__(self, memos: dict[str, Output]) -> None:
        self._memos = memos

    @property
    def size(self) -> int:
        return len(self._memos)

    def values(self) -> Iterator[Output]:
        return iter(self._memos.values())

    def pop(self, hashed_id: str) -> Output | None:
        """Remove and return one result (``None`` if there is none)."""
        return self._memos.pop(hashed_id, None)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> StepMemos:
        """Read the request's ``steps``: ``{"data": x}`` / ``{"error": {...}}``, or any other value as the data."""
        memos: dict[str, Output] = {}
        for key, value in raw.items():
            output = Output(data=value)
            if isinstance(value, dict):
                try:
                    shape = msgspec.convert(value, _OutputShape)
                except msgspec.ValidationError:
                    pass
                else:
                    output = Output(data=shape.data, error=shape.error)
            memos[key] = output
        return cls(memos)

    def to_raw(self) -> dict[str, Any]:
        """The results in the request's shape again, for the replay to read."""
        raw: dict[str, Any] = {}
        for key, output in self._memos.items():
            if output.error is not None:
                raw[key] = {"data": output.data, "error": dataclasses.asdict(output.error)}
            else:
                raw[key] = {"data": output.data}
        return raw


@dataclasses.dataclass
class SendEventsResult:
    """What a send returned: the ids of the events stored, and the error if it failed."""

    ids: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None


@dataclasses.dataclass
class TransformOutputStepInfo:
    """The step a request reports. Reassigning these fields has no effect;
    changing the ``opts`` dict in place (an invoke's payload) does."""

    id: str
    op: Opcode
    opts: dict[str, object] | None


@dataclasses.dataclass
class TransformOutputResult:
    """A request's outcome, as ``transform_output`` sees it; ``output`` and ``error`` are kept as left."""

    error: Exception | None
    output: object
    step: TransformOutputStepInfo | None

    def has_output(self) -> bool:
        return self.output is not EMPTY


class Middleware:
    """Base class of middleware with ``async`` hooks; override the hooks you need (each defaults to doing nothing)."""

    def __init__(self, client: Client, raw_request: object) -> None:
        self.client = client
        self.raw_request = raw_request

    async def transform_input(self, ctx: Context | ContextSync, function: Function, steps: StepMemos) -> None:
        """Before the handler runs: may change ``ctx`` and the stored step results."""
        return None

    async def before_execution(self) -> None:
        """Once per request, when code that has not run before starts."""
        return None

    async def after_execution(self) -> None:
        """After the handler returned or stopped at a step."""
        return None

    async def transform_output(self, result: TransformOutputResult) -> None:
        """May change the output or error the request sends."""
        return None

    async def before_response(self) -> None:
        """Just before the reply is sent."""
        return None

    async def before_send_events(self, events: list[Event]) -> None:
        """Before events are sent; may change them in place."""
        return None

    async def after_send_events(self, result: SendEventsResult) -> None:
        """After events were sent (or the send failed: ``result.error``)."""
        return None


class MiddlewareSync:
    """Base class of middleware with plain hooks (usable with ``async def`` and ``def`` functions alike)."""

    def __init__(self, client: Client, raw_request: object) -> None:
        self.client = client
        self.raw_request = raw_request

    def transform_input(self, ctx: Context | ContextSync, function: Function, steps: StepMemos) -> None:
        """Before the handler runs: may change ``ctx`` and the stored step results."""
        return None

    def before_execution(self) -> None:
        """Once per request, when code that has not run before starts."""
        return None

    def after_execution(self) -> None:
        """After the handler returned or stopped at a step."""
        return None

    def transform_output(self, result: TransformOutputResult) -> None:
        """May change the output or error the request sends."""
        return None

    def before_response(self) -> None:
        """Just before the reply is sent."""
        return None

    def before_send_events(self, events: list[Event]) -> None:
        """Before events are sent; may change them in place."""
        return None

    def after_send_events(self, result: SendEventsResult) -> None:
        """After events were sent (or the send failed: ``result.error``)."""
        return None


AnyMiddleware: TypeAlias = Middleware | MiddlewareSync
#: What ``Client(middleware=[...])`` and ``create_function(middleware=[...])`` take:
#: a middleware class, or any callable building one from ``(client, raw_request)``.
UninitializedMiddleware: TypeAlias = Callable[["Client", object], AnyMiddleware]


def _mismatched() -> AsyncUnsupportedError:
    return AsyncUnsupportedError("encountered async middleware in non-async context")


async def _maybe_await(value: object) -> None:
    if inspect.isawaitable(value):
        await value


class Chain:
    """The middleware of one request (or one send), built in order; runs each hook over all of them.

    Every hook returns the exception a middleware raised (or ``None``) rather
    than raising it, so the caller decides, as the official SDK does, what an
    error at that point means. ``*_sync`` hooks serve plain ``def`` functions.
    """

    def __init__(self, client: Client, raw_request: object, factories: Sequence[UninitializedMiddleware]) -> None:
        self.client = client
        self.raw_request = raw_request
        self.middleware: list[AnyMiddleware] = [make(client, raw_request) for make in factories]
        self._executing = False

    @property
    def execution_started(self) -> bool:
        """Whether ``before_execution`` has run (it runs at most once per request)."""
        return self._executing

    # --- async ----------------------------------------------------------------------

    async def _forward(self, call: Callable[[AnyMiddleware], object]) -> Exception | None:
        try:
            for m in self.middleware:
                await _maybe_await(call(m))
        except Exception as exc:
            return exc
        return None

    async def _reverse(self, call: Callable[[AnyMiddleware], object]) -> Exception | None:
        try:
            for m in reversed(self.middleware):
                await _maybe_await(call(m))
        except Exception as exc:
            return exc
        return None

    async def transform_input(
        self, ctx: Context | ContextSync, function: Function, steps: StepMemos
    ) -> Exception | None:
        return await self._forward(lambda m: m.transform_input(ctx, function, steps))

    async def before_execution(self) -> Exception | None:
        if self._executing:
            return None
        self._executing = True
        return await self._forward(lambda m: m.before_execution())

    async def after_execution(self) -> Exception | None:
        return await self._reverse(lambda m: m.after_execution())

    async def transform_output(self, result: TransformOutputResult) -> Exception | None:
        return await self._reverse(lambda m: m.transform_output(result))

    async def before_response(self) -> Exception | None:
        return await self._forward(lambda m: m.before_response())

    async def before_send_events(self, events: list[Event]) -> Exception | None:
        return await self._forward(lambda m: m.before_send_events(events))

    async def after_send_events(self, result: SendEventsResult) -> Exception | None:
        return await self._reverse(lambda m: m.after_send_events(result))

    # --- sync -----------------------------------------------------------------------

    def _forward_sync(self, hook: str, *args: object) -> Exception | None:
        try:
            for m in self.middleware:
                method = getattr(m, hook)
                if inspect.iscoroutinefunction(method):
                    return _mismatched()
                method(*args)
        except Exception as exc:
            return exc
        return None

    def _reverse_sync(self, hook: str, *args: object) -> Exception | None:
        try:
            for m in reversed(self.middleware):
                method = getattr(m, hook)
                if inspect.iscoroutinefunction(method):
                    return _mismatched()
                method(*args)
        except Exception as exc:
            return exc
        return None

    def transform_input_sync(
        self, ctx: Context | ContextSync, function: Function, steps: StepMemos
    ) -> Exception | None:
        return self._forward_sync("transform_input", ctx, function, steps)

    def before_execution_sync(self) -> Exception | None:
        if self._executing:
            return None
        self._executing = True
        return self._forward_sync("before_execution")

    def after_execution_sync(self) -> Exception | None:
        return self._reverse_sync("after_execution")

    def transform_output_sync(self, result: TransformOutputResult) -> Exception | None:
        return self._reverse_sync("transform_output", result)

    def before_response_sync(self) -> Exception | None:
        return self._forward_sync("before_response")

    def before_send_events_sync(self, events: list[Event]) -> Exception | None:
        return self._forward_sync("before_send_events", events)

    def after_send_events_sync(self, result: SendEventsResult) -> Exception | None:
        return self._reverse_sync("after_send_events", result)


def opcode_kind(op: str) -> Opcode | None:
    """The ``Opcode`` of a wire op name (``None`` for one this SDK does not report)."""
    return _OPCODES.get(op)


async def send_through(
    chain: Chain, events: list[Event], send: Callable[[list[Event]], Awaitable[list[str]]]
) -> list[str]:
    """Send ``events`` between the chain's ``before_send_events`` and ``after_send_events``.

    ``after_send_events`` also runs when the send fails (its ``result.error``
    says why), and the failure is then raised; a hook's error is raised too."""
    err = await chain.before_send_events(events)
    if err is not None:
        raise err
    result: SendEventsResult | None = None
    try:
        ids = await send(events)
        result = SendEventsResult(ids=list(ids))
    except SendEventsError as exc:
        result = SendEventsResult(ids=list(exc.ids), error=str(exc))
        raise
    except Exception as exc:
        result = SendEventsResult(error=str(exc))
        raise
    finally:
        if result is not None:
            err = await chain.after_send_events(result)
            if err is not None:
                raise err
    return ids


def send_through_sync(chain: Chain, events: list[Event], send: Callable[[list[Event]], list[str]]) -> list[str]:
    """``send_through`` for plain ``def`` code."""
    err = chain.before_send_events_sync(events)
    if err is not None:
        raise err
    result: SendEventsResult | None = None
    try:
        ids = send(events)
        result = SendEventsResult(ids=list(ids))
    except SendEventsError as exc:
        result = SendEventsResult(ids=list(exc.ids), error=str(exc))
        raise
    except Exception as exc:
        result = SendEventsResult(error=str(exc))
        raise
    finally:
        if result is not None:
            err = chain.after_send_events_sync(result)
            if err is not None:
                raise err
    return ids
