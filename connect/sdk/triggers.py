"""What starts a function: an event name (optionally filtered) or a cron schedule."""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter  # type: ignore[import-untyped]

from connect.sdk.errors import FunctionConfigError
from connect.sdk.validation import cel_problem
from protocol.payloads import Trigger


@dataclass(frozen=True)
class TriggerEvent:
    """Run the function for each event named ``event``.

    ``expression`` is an optional CEL filter over ``event`` (e.g.
    ``"event.data.total > 0"``); events that do not match do not start a run.
    """

    event: str
    expression: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.event, str) or not self.event.strip():
            raise FunctionConfigError("TriggerEvent.event must be a non-empty event name")
        if self.expression is not None and (not isinstance(self.expression, str) or not self.expression.strip()):
            raise FunctionConfigError("TriggerEvent.expression must be a non-empty string or None")
        if self.expression is not None and (problem := cel_problem(self.expression)) is not None:
            raise FunctionConfigError(f"TriggerEvent.expression: {problem}, got {self.expression!r}")

    def to_wire(self) -> Trigger:
        return Trigger(event=self.event, expression=self.expression)


@dataclass(frozen=True)
class TriggerCron:
    """Run the function on a cron schedule: ``"*/5 * * * *"``, ``"@hourly"``, or
    with a time zone, ``"TZ=Europe/Paris 0 9 * * 1-5"`` (default UTC).

    The executor schedules it: one run per tick, also across restarts. Only
    the registration config is produced here. ``jitter`` is accepted for
    compatibility and not used by this platform's executor.
    """

    cron: str
    jitter: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.cron, str) or not self.cron.strip():
            raise FunctionConfigError("TriggerCron.cron must be a non-empty cron expression")
        _check_cron(self.cron)
        if self.jitter is not None and (not isinstance(self.jitter, str) or not self.jitter.strip()):
            raise FunctionConfigError("TriggerCron.jitter must be a non-empty duration string or None")

    def to_wire(self) -> Trigger:
        return Trigger(cron=self.cron, jitter=self.jitter)


AnyTrigger = TriggerEvent | TriggerCron


def _check_cron(spec: str) -> None:
    text = spec.strip()
    for prefix in ("TZ=", "CRON_TZ="):
        if text.startswith(prefix):
            zone, _, text = text[len(prefix) :].partition(" ")
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise FunctionConfigError(f"TriggerCron {spec!r}: unknown time zone {zone!r}") from None
            text = text.strip()
            break
    if not text or not croniter.is_valid(text):
        raise FunctionConfigError(f"TriggerCron {spec!r}: {text!r} is not a valid cron expression")
