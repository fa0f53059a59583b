"""The replay engine's per-request state: step ids, memos, targeting, and how the request ends.

One ``Replay`` lives for exactly one call request. The handler is replayed from
the top; each step asks the replay what to do:

1. a memo exists → the step returns its data (or raises ``StepError``);
2. another step is targeted → the request fails with ``step_unexpected``;
3. the step cannot run here (not ``step.run``, or immediate execution is
   disabled) → the step is reported and the request ends;
4. otherwise the step body runs now and its result (or error) is reported,
   which also ends the request.

So at most one step body runs per request, unless the executor offers
checkpoints (``ctx.checkpoint_steps``, this platform's extension) and the
transport can send them: then a ``step.run`` of an ``async def`` handler that
returns, with no step targeted and no parallel group open, is stored through
the checkpoint (WORKER_CHECKPOINT) and returns its result as a later replay
would, and the handler goes on to its next step in the same request. The
handler does not wait for the answer right away: the next step waits for it
before it starts (``settle``), so no step begins before the one before it is
stored, while a handler that returns after its last step replies at once,
right behind that step's checkpoint. A refused checkpoint ends the request
with the step, as without checkpoints (a reply already sent behind it is
replaced by that step, see the gateway's ``accept_checkpoint``).
The ending is recorded on the replay *before* ``RequestEnded`` unwinds the
handler, so the outcome does not depend on user code letting that exception
through.

Inside a parallel group (``step.parallel``) rule 3 changes, as in the official
SDKs: with no step targeted, every new step of the group is reported
(``step.run`` as ``StepPlanned``) and the group carries on with its next
callable, so one request reports the whole group; with a step targeted, the
group's other new steps are skipped rather than refused.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn

import msgspec

from connect.sdk import errors
from protocol.limits import CHECKPOINT_ACK_TIMEOUT
from protocol.payloads import (
    OP_STEP_ERROR,
    OP_STEP_FAILED,
    OP_STEP_PLANNED,
    OP_STEP_RUN,
    STEP_TYPE_SEND_EVENT,
    ErrorInfo,
    Opcode,
    Userland,
    hash_step_id,
)

if TYPE_CHECKING:
    from connect.sdk.middleware import Chain

log = logging.getLogger("connect.sdk")

# --- control flow ---------------------------------------------------------------


class RequestEnded(BaseException):
    """Unwinds the user's handler once this request's ending is decided.

    A ``BaseException`` so that ``except Exception`` in user code lets it through.
    """


class NestedStepCalled(BaseException):
    """A step was called while a ``step.run`` body was executing."""


class GroupStepReported(BaseException):
    """A step of a parallel group was reported (or skipped); the group goes on with its next callable."""


#: How a parallel group's results are awaited by the executor (``opts.parallelMode``).
PARALLEL_WAIT = "wait"
PARALLEL_RACE = "race"


class Group:
    """The steps a parallel group reported in this request."""

    def __init__(self, mode: str, outer: Group | None) -> None:
        self.mode = mode
        self.outer = outer
        self.opcodes: list[Opcode] = []

    def decorate(self, opcode: Opcode) -> Opcode:
        if self.mode != PARALLEL_RACE and (self.outer is None or self.outer.mode != PARALLEL_RACE):
            return opcode
        opcode.opts = {**(opcode.opts or {}), "parallelMode": PARALLEL_RACE}
        return opcode


# Which replay (if any) is executing a step body in the current context.
# Context-local rather than a flag on the replay, so tasks the handler spawns
# before a body starts are not mistaken for nested calls.
_executing_body: contextvars.ContextVar[_BodyScope | None] = contextvars.ContextVar(
    "connect_sdk_executing_body", default=None
)


def current_step() -> str | None:
    """The user's id of the step whose body is running in this context (task or thread), if any."""
    scope = _executing_body.get()
    return None if scope is None else scope.identity.user_id


# --- endings --------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """The request ends by reporting step ops (NOT_COMPLETED): one, or a parallel group's."""

    opcodes: list[Opcode]
    no_retry: bool = False


@dataclass(frozen=True)
class Failure:
    """The request ends with a function-level error (ERROR).

    ``include_stack`` is false for errors raised before user code ran, whose
    bodies carry no ``stack`` key.
    """

    error: ErrorInfo
    no_retry: bool = False
    retry_after: str | None = None
    include_stack: bool = True


Ending = Report | Failure


# --- step ids and memos ---------------------------------------------------------


@dataclass(frozen=True)
class StepIdentity:
    """A step occurrence: the user's id, which repeat it is, and its hashed wire id."""

    user_id: str
    index: int | None  # None on first use; n - 1 on the n-th use
    hashed: str

    def opcode(
        self,
        op: str,
        *,
        name: str | None = None,
        opts: dict[str, Any] | None = None,
        data: Any = None,
        error: ErrorInfo | None = None,
        timing: Any = msgspec.UNSET,
    ) -> Opcode:
        return Opcode(
            op=op,
            id=self.hashed,
            name=self.user_id if name is None else name,
            displayName=self.user_id,
            opts=opts,
            userland=Userland(id=self.user_id, index=self.index),
            data=data,
            error=error,
            timing=timing,
        )


#: The `opts` of a ``step.send_event`` result, as the TypeScript SDK sends
#: them: the executor shows the step as a send rather than a run.
SEND_EVENT_OPTS: Final[dict[str, Any]] = {"type": STEP_TYPE_SEND_EVENT}


class _MemoError(msgspec.Struct):
    # Extra keys (Go may add noRetry, data, cause) are ignored.
    name: str
    message: str
    stack: str | None = None


class _MemoShape(msgspec.Struct, forbid_unknown_fields=True):
    data: Any = None
    error: _MemoError | None = None


@dataclass(frozen=True)
class Memo:
    """A stored step result: data, or the error the step finally failed with."""

    data: Any = None
    error: _MemoError | None = None

    @classmethod
    def parse(cls, raw: Any) -> Memo:
        """Read ``{"data": x}`` / ``{"error": {...}}``; any other value is the data itself.

        Waits store the matched event unwrapped and sleeps store ``null``, so a
        value with other keys than ``data``/``error`` is taken whole.
        """
        if isinstance(raw, dict):
            try:
                shape = msgspec.convert(raw, _MemoShape)
            except msgspec.ValidationError:
                return cls(data=raw)
            return cls(data=shape.data, error=shape.error)
        return cls(data=raw)

    def resolve(self) -> Any:
        """The data, or ``StepError`` raised into user code."""
        if self.error is not None:
            raise errors.StepError(self.error.message, self.error.name, self.error.stack)
        return self.data


# --- the replay -------------------------------------------------------------------


class Replay:
    """Decides, step by step, what one call request does; records how it ends.

    Step calls must be sequential: a sync handler runs in one worker thread
    while the event loop only waits for it, and an async handler that starts
    a step while another step's body is running (``asyncio.gather``) gets a
    non-retriable ``ConcurrentStepsError`` instead of a second body run.
    """

    def __init__(
        self,
        memos: Mapping[str, Any],
        *,
        target: str | None,
        disable_immediate_execution: bool,
        attempt: int,
        max_attempts: int | None,
        run_id: str = "",
        checkpoint: Callable[[Opcode], asyncio.Future[bool]] | None = None,
    ) -> None:
        self.run_id = run_id
        self._checkpoint = checkpoint
        # The last checkpoint, until its answer is awaited: (answer, the op that ends the request if refused).
        self._unanswered: tuple[asyncio.Future[bool], Opcode] | None = None
        self._group: Group | None = None
        self._memos = dict(memos)
        self._target = target
        self._disable_immediate_execution = disable_immediate_execution
        self._attempt = attempt
        self._max_attempts = max_attempts
        self._seen: dict[str, int] = {}
        self._nested = False
        self._body_active = False
        # The body running or last run: when it started (Unix ns) and its `opts`.
        self._body_started_ns = 0
        self._body_opts: dict[str, Any] | None = None
        self.ending: Ending | None = None
        #: The request's middleware (``connect.sdk.middleware.Chain``), if its function has any.
        self.hooks: Chain | None = None
        #: The exception the last step body raised, for ``transform_output``.
        self.raised: Exception | None = None

    def end(self, ending: Ending) -> NoReturn:
        """Record the request's ending (the first one wins) and unwind the handler."""
        if self.ending is None:
            if isinstance(ending, Report) and self._group is not None:
                ending = Report([self._group.decorate(op) for op in ending.opcodes], ending.no_retry)
            self.ending = ending
        raise RequestEnded

    # --- parallel groups --------------------------------------------------------

    def enter_group(self, mode: str) -> Group:
        if mode not in (PARALLEL_WAIT, PARALLEL_RACE):
            raise errors.FunctionConfigError(f'parallel_mode must be "wait" or "race", got {mode!r}')
        self._group = Group(mode, self._group)
        return self._group

    def leave_group(self, group: Group) -> None:
        self._group = group.outer

    def end_group(self, group: Group) -> None:
        """After the group's last callable: return if nothing was reported, else
        report everything together (into the enclosing group, if any)."""
        if not group.opcodes:
            return
        if group.outer is not None:
            group.outer.opcodes.extend(group.opcodes)
            raise GroupStepReported
        self.end(Report(group.opcodes))

    def _in_group(self, identity: StepIdentity, opcode: Opcode | None) -> None:
        """Inside a group: skip a step another request targets, or collect a new
        step's op and move on to the next callable. Returns if neither applies."""
        group = self._group
        if group is None:
            return
        if self._target is not None:
            if identity.hashed != self._target:
                raise GroupStepReported  # skipped: another step of the group is targeted
            return
        if opcode is not None:
            group.opcodes.append(group.decorate(opcode))
            raise GroupStepReported

    def identify(self, user_id: str) -> StepIdentity:
        """Count one more use of ``user_id`` and hash it as the official SDKs do."""
        if not isinstance(user_id, str) or not user_id:
            raise errors.FunctionConfigError("a step id must be a non-empty string")
        occurrence = self._seen.get(user_id, 0)
        self._seen[user_id] = occurrence + 1
        return StepIdentity(
            user_id=user_id,
            index=occurrence if occurrence else None,
            hashed=hash_step_id(user_id, occurrence),
        )

    def begin(self, user_id: str) -> tuple[StepIdentity, Memo | None]:
        """Enter a step: refuse nesting, identify it, and pop its memo if any."""
        if self.ending is not None:
            # User code swallowed RequestEnded and carried on; keep unwinding.
            raise RequestEnded
        scope = _executing_body.get()
        if scope is not None and scope.replay is self:
            self._nested = True
            raise NestedStepCalled
        if self._body_active:
            # Another task is inside a step body: steps were started concurrently
            # (e.g. asyncio.gather), which would run more than one body per request.
            self.end(
                Failure(
                    ErrorInfo(
                        name="ConcurrentStepsError",
                        message=f'step "{user_id}" was started while another step was running; '
                        "await steps one at a time, or use step.parallel",
                        stack=None,
                        code=errors.CODE_UNKNOWN,
                    ),
                    no_retry=True,
                )
            )
        identity = self.identify(user_id)
        if identity.hashed in self._memos:
            return identity, Memo.parse(self._memos.pop(identity.hashed))
        return identity, None

    @property
    def memos_left(self) -> bool:
        """Whether stored results remain that no step has taken yet."""
        return bool(self._memos)

    def report_new_step(self, identity: StepIdentity, opcode: Opcode) -> NoReturn:
        """End the request for a new step the executor carries out (sleep, wait, invoke)."""
        self._in_group(identity, opcode)
        self._refuse_untargeted(identity)
        self.end(Report([opcode]))

    def allow_run(self, identity: StepIdentity) -> None:
        """Return only if a new ``step.run`` body may run in this request; otherwise end it."""
        self._in_group(identity, identity.opcode(OP_STEP_PLANNED))
        self._refuse_untargeted(identity)
        if self._disable_immediate_execution and self._target is None:
            # After a parallel group the executor wants each new step planned
            # and then run by a request targeting it.
            self.end(Report([identity.opcode(OP_STEP_PLANNED)]))

    def _refuse_untargeted(self, identity: StepIdentity) -> None:
        if self._target is not None and identity.hashed != self._target:
            self.end(
                Failure(
                    ErrorInfo(
                        name="StepUnexpectedError",
                        message=f'found step "{identity.user_id}" when targeting a different step',
                        stack=None,
                        code=errors.CODE_STEP_UNEXPECTED,
                    )
                )
            )

    def executing(self, identity: StepIdentity, opts: dict[str, Any] | None = None) -> _BodyScope:
        """Scope for running a ``step.run`` body (``opts``: those of its
        result, e.g. ``SEND_EVENT_OPTS``); turns how it exits into the request's ending."""
        self._body_opts = opts
        return _BodyScope(self, identity)

    def _ran(self, identity: StepIdentity, op: str, *, data: Any = None, error: ErrorInfo | None = None) -> Opcode:
        """The op reporting the body just run, with when it ran (`Opcode.timing`)."""
        started = self._body_started_ns
        timing = {"a": started, "b": time.time_ns() - started} if started else msgspec.UNSET
        return identity.opcode(op, opts=self._body_opts, data=data, error=error, timing=timing)

    def body_returned(self, identity: StepIdentity, value: Any) -> NoReturn:
        self._result_op(identity, value)
        self.end(Report([self._ran(identity, OP_STEP_RUN, data=value)]))

    def body_done(self, identity: StepIdentity, value: Any) -> Any:
        """Async handlers: send the result as a checkpoint and return it as a
        later replay would (JSON round trip), or end the request with it."""
        encoded = self._result_op(identity, value)
        reported = self._ran(identity, OP_STEP_RUN, data=value)
        if (
            self._checkpoint is None
            or self._group is not None
            or self._target is not None
            or self._disable_immediate_execution
        ):
            self.end(Report([reported]))
        answer = self._checkpoint(msgspec.structs.replace(reported, data=msgspec.Raw(encoded)))
        if answer.done() and not answer.result():  # refused at once (e.g. the worker is shutting down)
            self.end(Report([reported]))
        self._unanswered = (answer, reported)
        # The next step is a new one: its attempts start from zero, as in a new request.
        self._attempt = 0
        return msgspec.json.decode(encoded)

    async def settle(self) -> None:
        """Before a step starts: wait for the answer to the last checkpoint.
        A refused one (or none within ``CHECKPOINT_ACK_TIMEOUT``) ends the
        request with that step, so a step never begins before the one before
        it is stored."""
        unanswered = self._unanswered
        if unanswered is None:
            return
        self._unanswered = None
        answer, reported = unanswered
        # Other tasks' steps see a step in progress (ConcurrentStepsError), as during its body.
        self._body_active = True
        try:
            stored = answer.result() if answer.done() else await _answer_within(answer, reported.displayName)
        finally:
            self._body_active = False
        if not stored or self.ending is not None:
            self.end(Report([reported]))

    def _result_op(self, identity: StepIdentity, value: Any) -> bytes:
        """Check a returned body (nesting, serializability); its JSON encoding."""
        if self._nested:
            self.end_nested(identity)
        try:
            return msgspec.json.encode(value)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            self.end(
                Failure(
                    ErrorInfo(
                        name="OutputUnserializableError",
                        message=f'"{identity.user_id}" returned unserializable data: {exc}',
                        stack=None,
                        code=errors.CODE_OUTPUT_UNSERIALIZABLE,
                    ),
                    include_stack=False,
                )
            )

    def body_raised(self, identity: StepIdentity, exc: Exception) -> NoReturn:
        if self._nested:
            self.end_nested(identity)
        self.raised = exc
        last_attempt = self._max_attempts is not None and self._attempt + 1 >= self._max_attempts
        op = OP_STEP_FAILED if last_attempt else OP_STEP_ERROR
        self.end(
            Report(
                [self._ran(identity, op, error=errors.describe(exc))],
                no_retry=not errors.is_retriable(exc),
            )
        )

    def end_nested(self, identity: StepIdentity) -> NoReturn:
        error = ErrorInfo(
            name="NestedStepError",
            message="Nested steps are not supported.",
            stack=None,
            code=errors.CODE_STEP_NESTED,
        )
        self.end(Report([identity.opcode(OP_STEP_ERROR, error=error)], no_retry=True))

    @property
    def nested(self) -> bool:
        return self._nested

    @property
    def body_active(self) -> bool:
        """Whether a ``step.run`` body is executing (in any task or thread)."""
        return self._body_active

    @body_active.setter
    def body_active(self, value: bool) -> None:
        self._body_active = value

    def body_started(self) -> None:
        """A body starts now: its op will say when (`Opcode.timing`)."""
        self._body_started_ns = time.time_ns()


class _BodyScope:
    """Marks a body as executing and maps its exit to an ending.

    On exit: a return is reported by the caller via ``body_returned``;
    ``NonRetriableError``/``RetryAfterError`` escape to function level; any
    other exception (or a nested step call) ends the request as a step error.
    """

    def __init__(self, replay: Replay, identity: StepIdentity) -> None:
        self.replay = replay
        self.identity = identity
        self._token: contextvars.Token[_BodyScope | None] | None = None

    def __enter__(self) -> None:
        self._token = _executing_body.set(self)
        self.replay.body_active = True
        self.replay.body_started()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.replay.body_active = False
        if self._token is not None:
            _executing_body.reset(self._token)
        if exc is None or isinstance(exc, RequestEnded):
            return
        if self.replay.nested or isinstance(exc, NestedStepCalled):
            self.replay.end_nested(self.identity)
        if isinstance(exc, errors.NonRetriableError | errors.RetryAfterError):
            return
        if isinstance(exc, Exception):
            self.replay.body_raised(self.identity, exc)
        # Cancellation and other BaseExceptions propagate untouched.


async def _answer_within(answer: asyncio.Future[bool], step: str) -> bool:
    """`answer`, or False once ``CHECKPOINT_ACK_TIMEOUT`` passed without one.

    The timer answers the future itself, so the wait costs one timer and one
    wake-up of the task (no timeout scope, no shielding future: cancelling the
    future with its task is harmless, the connection resolves only futures
    still pending)."""
    timer = asyncio.get_running_loop().call_later(CHECKPOINT_ACK_TIMEOUT, _no_answer, answer, step)
    try:
        return await answer
    finally:
        timer.cancel()


def _no_answer(answer: asyncio.Future[bool], step: str) -> None:
    if not answer.done():
        log.warning("no answer to the checkpoint of step %r; ending the request with it", step)
        answer.set_result(False)
