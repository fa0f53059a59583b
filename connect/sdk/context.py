"""What a handler is told about the run it is executing."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from protocol.payloads import Event

if TYPE_CHECKING:
    from connect.sdk.group import Group, GroupSync
    from connect.sdk.step import Step, StepSync


@dataclass
class _RunView:
    """The fields ``Context`` and ``ContextSync`` share (see ``Context``)."""

    event: Event
    events: list[Event]
    run_id: str
    attempt: int
    request_id: str
    job_id: str
    logger: logging.Logger | logging.LoggerAdapter[Any]


@dataclass
class Context(_RunView):
    """The run as seen by one request; rebuilt from the executor's request every time.

    ``attempt`` is 0-based and counts retries of the current request (it resets
    after each completed step). ``events`` are the run's events, read from the
    request's ``events`` as the official SDK reads them: the triggering event
    alone for most runs, a batch's events in arrival order for a function with
    ``batch_events``; ``event`` is the first of them. ``request_id`` and
    ``job_id`` are empty when the transport did not provide them.
    ``function_id`` is the function's local id (``fn_id``; its ``on_failure``
    handler sees ``<fn_id>-failure``).

    ``step`` and ``group`` are the step tools (``ctx.step.run(...)``,
    ``ctx.group.parallel(...)``), for handlers written ``async def f(ctx)``;
    a handler written ``async def f(ctx, step)`` is given the same ``step``.
    """

    step: Step = field(repr=False)
    group: Group = field(repr=False)
    function_id: str = ""


@dataclass
class ContextSync(_RunView):
    """``Context`` for plain ``def`` handlers: the same fields, with ``StepSync`` and ``GroupSync`` tools."""

    step: StepSync = field(repr=False)
    group: GroupSync = field(repr=False)
    function_id: str = ""
