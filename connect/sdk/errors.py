"""Errors user code raises or receives, and how any exception is described on the wire.

Every SDK error carries a stable ``code`` (one of the ``ErrorCode`` strings the
executor understands) and says whether retrying can help. ``describe`` turns
any exception into the ``{code, name, message, stack}`` shape the executor stores.
"""

from __future__ import annotations

import datetime
import os
import traceback
from typing import Final

from protocol.payloads import ErrorInfo

# Error codes shared with the executor (the `code` field of error bodies).
CODE_UNKNOWN: Final = "unknown"
CODE_BODY_INVALID: Final = "body_invalid"
CODE_FUNCTION_CONFIG_INVALID: Final = "function_config_invalid"
CODE_FUNCTION_NOT_FOUND: Final = "function_not_found"
CODE_NON_RETRIABLE_ERROR: Final = "non_retriable_error"
CODE_OUTPUT_UNSERIALIZABLE: Final = "output_unserializable"
CODE_RETRY_AFTER_ERROR: Final = "retry_after_error"
CODE_SEND_EVENT_FAILED: Final = "send_event_failed"
CODE_STEP_ERRORED: Final = "step_errored"
CODE_STEP_NESTED: Final = "step_nested"
CODE_STEP_UNEXPECTED: Final = "step_unexpected"


class SDKError(Exception):
    """Base class of the SDK's own errors: a stable ``code`` and a retry policy."""

    code: str = CODE_UNKNOWN
    retriable: bool = True


class FunctionConfigError(SDKError, ValueError):
    """A function, trigger, client or step option is invalid.

    Raised at decoration time for bad function options, and inside a handler
    for bad step options (for example a wait timeout that is not whole seconds),
    where it fails the request like any other exception.
    """

    code = CODE_FUNCTION_CONFIG_INVALID


class NonRetriableError(SDKError):
    """Raise to fail the run at once, without retries.

    Raised inside ``step.run`` it is not turned into a step error: it escapes the
    step and fails the whole request, which the executor does not retry.
    ``quiet=True`` keeps the SDK from logging it.
    """

    code = CODE_NON_RETRIABLE_ERROR
    retriable = False

    def __init__(self, message: str | None = None, quiet: bool = False) -> None:
        super().__init__(message or "")
        self.quiet = quiet


class RetryAfterError(SDKError):
    """Raise to have the executor retry the request no earlier than a given time.

    ``retry_after`` is milliseconds from now, a ``timedelta`` from now, or an
    absolute ``datetime`` (a naive one counts as local time). The moment is fixed
    when the error is created and kept in ``retry_after`` as an aware UTC datetime.
    Like ``NonRetriableError`` it escapes ``step.run`` to function level.
    """

    code = CODE_RETRY_AFTER_ERROR

    def __init__(
        self,
        message: str | None,
        retry_after: int | datetime.timedelta | datetime.datetime,
        quiet: bool = False,
    ) -> None:
        super().__init__(message or "")
        now = datetime.datetime.now(datetime.UTC)
        if isinstance(retry_after, bool):
            raise TypeError("retry_after must be milliseconds, a timedelta or a datetime, not a bool")
        if isinstance(retry_after, int):
            at = now + datetime.timedelta(milliseconds=retry_after)
        elif isinstance(retry_after, datetime.timedelta):
            at = now + retry_after
        else:
            at = retry_after.astimezone(datetime.UTC)
        self.retry_after: datetime.datetime = at
        self.quiet = quiet


class StepError(SDKError):
    """A step failed for good; raised into user code where the step is called.

    It carries the original error's ``name``, ``message`` and ``stack`` as the
    executor stored them (the original exception class is not recreated). User
    code may catch it; if it escapes the handler the run fails without retries,
    because the step's own retries are already used up.
    """

    code = CODE_STEP_ERRORED
    retriable = False

    def __init__(self, message: str, name: str, stack: str | None) -> None:
        super().__init__(message)
        self._message = message
        self._name = name
        self._stack = stack

    @property
    def message(self) -> str:
        return self._message

    @property
    def name(self) -> str:
        return self._name

    @property
    def stack(self) -> str | None:
        return self._stack


class SendEventsError(SDKError):
    """Sending events failed. ``ids`` holds the ids of events accepted before the failure."""

    code = CODE_SEND_EVENT_FAILED

    def __init__(self, message: str, ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.ids: list[str] = list(ids or [])


def is_retriable(exc: BaseException) -> bool:
    """Whether the executor may retry after this exception (unknown exceptions: yes)."""
    return exc.retriable if isinstance(exc, SDKError) else True


def is_quiet(exc: BaseException) -> bool:
    return bool(getattr(exc, "quiet", False))


def describe(exc: BaseException) -> ErrorInfo:
    """The wire description of an exception: ``{code, name, message, stack}``.

    A ``StepError`` is described by the original error it carries.
    """
    if isinstance(exc, StepError):
        return ErrorInfo(name=exc.name, message=exc.message, stack=exc.stack, code=exc.code)
    code = exc.code if isinstance(exc, SDKError) else CODE_UNKNOWN
    return ErrorInfo(name=type(exc).__name__, message=str(exc), stack=user_traceback(exc), code=code)


_PACKAGE_DIR: Final = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_traceback(exc: BaseException) -> str:
    """The traceback text of ``exc`` without the SDK's own leading frames.

    Exceptions are caught by SDK code that called into user code; those outer
    frames say nothing about the user's failure, so they are dropped.
    """
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))
