"""The step tools handed to handlers: ``Step`` for ``async def`` handlers, ``StepSync`` for plain ``def``.

Both follow the same replay rules (see ``connect.sdk.replay``): a step with a
stored result returns it; a new step either runs now (``run``, ``send_event``)
or is reported to the executor (``sleep``, ``wait_for_event``, ``invoke``),
and in both cases the request then ends, so code after the first new step
runs only in a later request. Step ids should be unique within a function;
reusing one is allowed as long as the function is deterministic (the n-th
use is told apart by its position).

``parallel`` is the exception: the steps of its callables are reported
together, and the executor runs them concurrently, each in its own request
(on any worker), storing each result as it arrives.
"""

from __future__ import annotations

import datetime
import enum
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, overload

import msgspec

from connect.sdk.durations import to_duration_string, to_iso_utc
from connect.sdk.errors import FunctionConfigError
from connect.sdk.events import derived_event_id, normalize
from connect.sdk.middleware import Chain, send_through, send_through_sync
from connect.sdk.replay import (
    PARALLEL_RACE,
    PARALLEL_WAIT,
    SEND_EVENT_OPTS,
    GroupStepReported,
    Memo,
    Replay,
    StepIdentity,
)
from connect.sdk.serializer import NO_OUTPUT_TYPE
from connect.sdk.validation import cel_problem
from protocol.payloads import OP_INVOKE_FUNCTION, OP_SLEEP, OP_WAIT_FOR_EVENT, Event

if TYPE_CHECKING:
    from connect.sdk.client import Client
    from connect.sdk.function import Function

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class ParallelMode(enum.StrEnum):
    """How the executor continues after a parallel group.

    ``WAIT`` (the default) continues once every step of the group has a
    result; ``RACE`` asks it to look for the next step after each one. This
    SDK, like the official Python SDK, only returns from ``parallel`` once
    every result is in, so both give the same results.
    """

    WAIT = PARALLEL_WAIT
    RACE = PARALLEL_RACE


def _mode(value: ParallelMode | str) -> str:
    return value.value if isinstance(value, ParallelMode) else str(value)


class _StepTools:
    """The parts shared by both flavours: every step that never runs user code."""

    def __init__(self, replay: Replay, client: Client) -> None:
        self._replay = replay
        self._client = client

    def _typed(self, value: Any, output_type: object) -> Any:
        """A stored step result as the declared type (unchanged without one)."""
        if output_type is NO_OUTPUT_TYPE:
            return value
        return self._client.serializer.deserialize(value, output_type)

    def _stamped(self, events: Event | Sequence[Event], step_hash: str) -> list[Event]:
        """Give every event without an id one derived from (run, step, position),
        so a retried ``send_event`` sends the same ids and the server stores each once."""
        return [
            e if e.id else msgspec.structs.replace(e, id=derived_event_id(self._replay.run_id, step_hash, i))
            for i, e in enumerate(normalize(events))
        ]

    def _execution_due(self) -> Chain | None:
        """The request's middleware, if its ``before_execution`` is due now: the
        step just begun took the last stored result (or there were none)."""
        hooks = self._replay.hooks
        if hooks is None or hooks.execution_started or self._replay.memos_left:
            return None
        return hooks

    def _sleep_until(self, identity: StepIdentity, memo: Memo | None, until: datetime.datetime) -> None:
        if memo is not None:
            memo.resolve()
            return
        # The executor wakes the run at this instant; the name carries it, in whole
        # milliseconds rounded up, so the run never wakes before `until`.
        until += datetime.timedelta(microseconds=-until.microsecond % 1000)
        self._replay.report_new_step(identity, identity.opcode(OP_SLEEP, name=to_iso_utc(until)))

    @staticmethod
    def _deadline(duration: int | datetime.timedelta) -> datetime.datetime:
        if isinstance(duration, bool) or not isinstance(duration, int | datetime.timedelta):
            raise TypeError("sleep duration must be int milliseconds or a timedelta")
        delta = datetime.timedelta(milliseconds=duration) if isinstance(duration, int) else duration
        return datetime.datetime.now(datetime.UTC) + delta

    @staticmethod
    def _wait_opts(step_id: str, if_exp: str | None, timeout: int | datetime.timedelta) -> dict[str, str | None]:
        if if_exp is not None and (problem := cel_problem(if_exp)) is not None:
            raise FunctionConfigError(f"step.wait_for_event {step_id!r}: if_exp: {problem}, got {if_exp!r}")
        return {"if": if_exp, "timeout": to_duration_string(timeout)}

    def _wait_for_event(
        self, identity: StepIdentity, memo: Memo | None, event: str, opts: dict[str, str | None]
    ) -> Event | None:
        if memo is not None:
            # The executor stores the matched event unwrapped, or null on timeout.
            value = memo.resolve()
            return None if value is None else msgspec.convert(value, Event, strict=False)
        self._replay.report_new_step(identity, identity.opcode(OP_WAIT_FOR_EVENT, name=event, opts=opts))

    @staticmethod
    def _invoke_opts(
        app_id: str,
        function_id: str,
        data: Mapping[str, object] | None,
        timeout: int | datetime.timedelta | None,
        v: str | None,
    ) -> dict[str, Any]:
        return {
            "function_id": f"{app_id}-{function_id}",
            "payload": {"data": None if data is None else dict(data), "v": v},
            "timeout": None if timeout is None else to_duration_string(timeout),
        }

    def _invoke(self, identity: StepIdentity, memo: Memo | None, opts: dict[str, Any]) -> Any:
        if memo is not None:
            return memo.resolve()
        self._replay.report_new_step(identity, identity.opcode(OP_INVOKE_FUNCTION, opts=opts))


class Step(_StepTools):
    """Step tools for ``async def`` handlers."""

    async def _begin(self, step_id: str) -> tuple[StepIdentity, Memo | None]:
        identity, memo = self._replay.begin(step_id)
        if (hooks := self._execution_due()) is not None:
            await hooks.before_execution()  # an error here is ignored, as in the official SDK
        return identity, memo

    @overload
    async def run(
        self, step_id: str, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts, output_type: object = ...
    ) -> T: ...

    @overload
    async def run(self, step_id: str, fn: Callable[[*Ts], T], *args: *Ts, output_type: object = ...) -> T: ...

    async def run(
        self, step_id: str, fn: Callable[[*Ts], Any], *args: *Ts, output_type: object = NO_OUTPUT_TYPE
    ) -> Any:
        """Run ``fn(*args)`` once, durably; later replays return the stored result.

        ``fn`` may be ``async`` (awaited) or a plain function, which is called
        directly on the event loop: keep it quick, or make it ``async`` / use a
        sync handler for blocking work. Its result must be JSON-serializable,
        or of the declared ``output_type`` (a pydantic model, ``list[Model]``,
        a dataclass...): it is then stored through the client's serializer and
        returned as that type, the first time and on every replay.
        If it raises, the step is retried per the function's ``retries``; once
        they are exhausted, this call raises ``StepError`` on the next replay.
        ``NonRetriableError`` and ``RetryAfterError`` are not step errors: they
        fail the whole request.
        """
        await self._replay.settle()
        identity, memo = await self._begin(step_id)
        if memo is not None:
            value = memo.resolve()
            return value if output_type is NO_OUTPUT_TYPE else self._typed(value, output_type)
        self._replay.allow_run(identity)
        with self._replay.executing(identity):
            value = fn(*args)
            if inspect.isawaitable(value):
                value = await value
            if output_type is not NO_OUTPUT_TYPE:
                value = self._client.serializer.serialize(value, output_type)
        value = self._replay.body_done(identity, value)
        return value if output_type is NO_OUTPUT_TYPE else self._typed(value, output_type)

    async def send_event(self, step_id: str, events: Event | Sequence[Event]) -> list[str]:
        """Send events as a step; returns their ids.

        Exactly once per step id: a replay returns the stored ids, and a retry
        of the step re-sends the same event ids, which the server stores once.
        """
        await self._replay.settle()
        identity, memo = await self._begin(step_id)
        if memo is not None:
            return memo.resolve()  # type: ignore[no-any-return]
        self._replay.allow_run(identity)
        with self._replay.executing(identity, SEND_EVENT_OPTS):
            stamped = self._stamped(events, identity.hashed)
            hooks = self._replay.hooks
            if hooks is None:
                value = await self._client.send(stamped)
            else:
                value = await send_through(hooks, stamped, self._send_unhooked)
        return self._replay.body_done(identity, value)  # type: ignore[no-any-return]

    async def _send_unhooked(self, events: list[Event]) -> list[str]:
        return await self._client.send(events, skip_middleware=True)

    async def parallel(
        self,
        callables: Sequence[Callable[[], Awaitable[T]]],
        parallel_mode: ParallelMode | str = ParallelMode.WAIT,
    ) -> tuple[T, ...]:
        """Run the steps of several callables concurrently; returns their results in order.

        Each callable runs one step (or a short chain of them), e.g.
        ``await step.parallel((lambda: step.run("a", fa), lambda: step.run("b", fb)))``.
        New steps are reported together and run by the executor at the same
        time, on any workers; each result is stored as it arrives, and the
        function continues once all of them are in. A step that finally
        failed raises its ``StepError`` here.
        """
        await self._replay.settle()
        group = self._replay.enter_group(_mode(parallel_mode))
        results: list[Any] = []
        try:
            for callable_ in callables:
                try:
                    value: Any = callable_()
                    if inspect.isawaitable(value):
                        value = await value
                except GroupStepReported:
                    continue
                results.append(value)
        finally:
            self._replay.leave_group(group)
        self._replay.end_group(group)
        return tuple(results)

    async def sleep(self, step_id: str, duration: int | datetime.timedelta) -> None:
        """Pause the run for ``duration`` (milliseconds or a ``timedelta``)."""
        await self._replay.settle()
        until = self._deadline(duration)
        identity, memo = await self._begin(step_id)
        self._sleep_until(identity, memo, until)

    async def sleep_until(self, step_id: str, until: datetime.datetime) -> None:
        """Pause the run until ``until`` (a naive datetime counts as local time)."""
        await self._replay.settle()
        identity, memo = await self._begin(step_id)
        self._sleep_until(identity, memo, until)

    async def wait_for_event(
        self,
        step_id: str,
        *,
        event: str,
        if_exp: str | None = None,
        timeout: int | datetime.timedelta,
    ) -> Event | None:
        """Wait for an event named ``event`` (filtered by the CEL ``if_exp``); ``None`` on timeout."""
        await self._replay.settle()
        opts = self._wait_opts(step_id, if_exp, timeout)
        identity, memo = await self._begin(step_id)
        return self._wait_for_event(identity, memo, event, opts)

    async def invoke(
        self,
        step_id: str,
        *,
        function: Function,
        data: Mapping[str, object] | None = None,
        timeout: int | datetime.timedelta | None = None,
        v: str | None = None,
    ) -> Any:
        """Run another function of this app and return its output (``StepError`` if it failed),
        as the function's ``output_type`` if it declares one."""
        await self._replay.settle()
        opts = self._invoke_opts(self._client.app_id, function.id, data, timeout, v)
        identity, memo = await self._begin(step_id)
        return self._typed(self._invoke(identity, memo, opts), function.output_type)

    async def invoke_by_id(
        self,
        step_id: str,
        *,
        app_id: str | None = None,
        function_id: str,
        data: Mapping[str, object] | None = None,
        timeout: int | datetime.timedelta | None = None,
        v: str | None = None,
    ) -> Any:
        """Like ``invoke``, naming the function by its local id (and app, default this one)."""
        await self._replay.settle()
        opts = self._invoke_opts(app_id or self._client.app_id, function_id, data, timeout, v)
        identity, memo = await self._begin(step_id)
        return self._invoke(identity, memo, opts)


class StepSync(_StepTools):
    """Step tools for plain ``def`` handlers, which run in a worker thread."""

    def _begin(self, step_id: str) -> tuple[StepIdentity, Memo | None]:
        identity, memo = self._replay.begin(step_id)
        if (hooks := self._execution_due()) is not None:
            hooks.before_execution_sync()  # an error here is ignored, as in the official SDK
        return identity, memo

    def run(self, step_id: str, fn: Callable[[*Ts], T], *args: *Ts, output_type: object = NO_OUTPUT_TYPE) -> T:
        """Run ``fn(*args)`` once, durably; later replays return the stored result.

        Same rules as ``Step.run`` (``output_type`` included); ``fn`` is called
        directly in the handler's thread.
        """
        identity, memo = self._begin(step_id)
        if memo is not None:
            return self._typed(memo.resolve(), output_type)  # type: ignore[no-any-return]
        self._replay.allow_run(identity)
        with self._replay.executing(identity):
            value: Any = fn(*args)
            if output_type is not NO_OUTPUT_TYPE:
                value = self._client.serializer.serialize(value, output_type)
        self._replay.body_returned(identity, value)

    def send_event(self, step_id: str, events: Event | Sequence[Event]) -> list[str]:
        """Send events as a step; returns their ids (exactly once per step id, as ``Step.send_event``)."""
        identity, memo = self._begin(step_id)
        if memo is not None:
            return memo.resolve()  # type: ignore[no-any-return]
        self._replay.allow_run(identity)
        with self._replay.executing(identity, SEND_EVENT_OPTS):
            stamped = self._stamped(events, identity.hashed)
            hooks = self._replay.hooks
            if hooks is None:
                value = self._client.send_sync(stamped)
            else:
                value = send_through_sync(hooks, stamped, self._send_unhooked)
        self._replay.body_returned(identity, value)

    def _send_unhooked(self, events: list[Event]) -> list[str]:
        return self._client.send_sync(events, skip_middleware=True)

    def parallel(
        self,
        callables: Sequence[Callable[[], T]],
        parallel_mode: ParallelMode | str = ParallelMode.WAIT,
    ) -> tuple[T, ...]:
        """Run the steps of several callables concurrently (see ``Step.parallel``)."""
        group = self._replay.enter_group(_mode(parallel_mode))
        results: list[Any] = []
        try:
            for callable_ in callables:
                try:
                    value = callable_()
                except GroupStepReported:
                    continue
                results.append(value)
        finally:
            self._replay.leave_group(group)
        self._replay.end_group(group)
        return tuple(results)

    def sleep(self, step_id: str, duration: int | datetime.timedelta) -> None:
        """Pause the run for ``duration`` (milliseconds or a ``timedelta``)."""
        until = self._deadline(duration)
        self._sleep_until(*self._begin(step_id), until)

    def sleep_until(self, step_id: str, until: datetime.datetime) -> None:
        """Pause the run until ``until`` (a naive datetime counts as local time)."""
        self._sleep_until(*self._begin(step_id), until)

    def wait_for_event(
        self,
        step_id: str,
        *,
        event: str,
        if_exp: str | None = None,
        timeout: int | datetime.timedelta,
    ) -> Event | None:
        """Wait for an event named ``event`` (filtered by the CEL ``if_exp``); ``None`` on timeout."""
        opts = self._wait_opts(step_id, if_exp, timeout)
        return self._wait_for_event(*self._begin(step_id), event, opts)

    def invoke(
        self,
        step_id: str,
        *,
        function: Function,
        data: Mapping[str, object] | None = None,
        timeout: int | datetime.timedelta | None = None,
        v: str | None = None,
    ) -> Any:
        """Run another function of this app and return its output (``StepError`` if it failed),
        as the function's ``output_type`` if it declares one."""
        opts = self._invoke_opts(self._client.app_id, function.id, data, timeout, v)
        return self._typed(self._invoke(*self._begin(step_id), opts), function.output_type)

    def invoke_by_id(
        self,
        step_id: str,
        *,
        app_id: str | None = None,
        function_id: str,
        data: Mapping[str, object] | None = None,
        timeout: int | datetime.timedelta | None = None,
        v: str | None = None,
    ) -> Any:
        """Like ``invoke``, naming the function by its local id (and app, default this one)."""
        opts = self._invoke_opts(app_id or self._client.app_id, function_id, data, timeout, v)
        return self._invoke(*self._begin(step_id), opts)
