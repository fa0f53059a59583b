"""A function's options: the model that validates them all, and the option types.

``FunctionOptions`` is what ``create_function`` checks its keyword arguments
against, once, when the function is defined (never per step): each field is
named as the argument is, and a bad value raises ``FunctionConfigError``
naming that field, e.g. ``greet: retries: input should be less than or equal
to 20, got 25``. A new option (flow control: ``concurrency``, ``throttle``,
...) is one more field here, with the official SDK's name and type, plus its
registration shape in ``Function.config``.

``Cancel`` and ``Timeouts`` validate themselves on construction
(``FunctionConfigError`` for a bad value) and know their registration shape.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from connect.sdk.durations import to_duration_string
from connect.sdk.errors import FunctionConfigError
from connect.sdk.triggers import AnyTrigger, TriggerCron, TriggerEvent
from connect.sdk.validation import NonBlank, config_error, instance_of

MAX_RETRIES: Final = 20

Duration = int | datetime.timedelta  # int = milliseconds


@dataclass(frozen=True)
class Cancel:
    """Cancel a run when an event named ``event`` arrives.

    ``if_exp`` is an optional CEL condition over ``event`` (the run's
    triggering event) and ``async`` (the incoming one), e.g.
    ``"async.data.order_id == event.data.order_id"``. ``timeout`` (ms or a
    ``timedelta``, whole seconds) limits how long after the run starts the
    condition applies. A cancelled run stops at its next step boundary.
    """

    event: str
    if_exp: str | None = None
    timeout: Duration | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.event, str) or not self.event.strip():
            raise FunctionConfigError("Cancel.event must be a non-empty event name")
        if self.if_exp is not None and (not isinstance(self.if_exp, str) or not self.if_exp.strip()):
            raise FunctionConfigError("Cancel.if_exp must be a non-empty string or None")
        if self.timeout is not None:
            to_duration_string(self.timeout)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"event": self.event}
        if self.if_exp is not None:
            wire["if"] = self.if_exp
        if self.timeout is not None:
            wire["timeout"] = to_duration_string(self.timeout)
        return wire


@dataclass(frozen=True)
class Timeouts:
    """Limits on a run's life; a run past one is cancelled.

    ``start``: how long a run may wait for a worker to begin it.
    ``finish``: how long a run may take from start to end, sleeps and waits
    included. Each is ms or a ``timedelta`` (whole seconds), or None for no limit.
    """

    start: Duration | None = None
    finish: Duration | None = None

    def __post_init__(self) -> None:
        for value in (self.start, self.finish):
            if value is not None:
                to_duration_string(value)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {}
        if self.start is not None:
            wire["start"] = to_duration_string(self.start)
        if self.finish is not None:
            wire["finish"] = to_duration_string(self.finish)
        return wire


def _one_or_many(value: object) -> object:
    """``trigger=`` takes one trigger or a sequence of them."""
    if isinstance(value, TriggerEvent | TriggerCron):
        return (value,)
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError(f"must be a TriggerEvent, a TriggerCron or a list of them, got {type(value).__name__}")
    if not value:
        raise ValueError("at least one trigger is required")
    return tuple(value)


class FunctionOptions(BaseModel):
    """The options of ``create_function`` (and ``Function``), as the user passes them."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    fn_id: NonBlank
    name: NonBlank | None = None
    trigger: Annotated[
        tuple[Annotated[Any, instance_of(TriggerEvent, TriggerCron)], ...],
        BeforeValidator(_one_or_many),
    ]
    #: Retries per step and per request after the first attempt; None = the server's default.
    retries: Annotated[int, Field(strict=True, ge=0, le=MAX_RETRIES)] | None = None
    cancel: tuple[Annotated[Any, instance_of(Cancel)], ...] = ()
    timeouts: Annotated[Any, instance_of(Timeouts)] | None = None

    @property
    def triggers(self) -> tuple[AnyTrigger, ...]:
        return self.trigger

    @classmethod
    def checked(cls, **options: Any) -> FunctionOptions:
        """The options validated, or ``FunctionConfigError`` naming each field that is wrong."""
        if options.get("cancel") is None:
            options["cancel"] = ()
        try:
            return cls.model_validate(options)
        except ValidationError as exc:
            fn_id = options.get("fn_id")
            subject = fn_id if isinstance(fn_id, str) and fn_id.strip() else "function"
            raise config_error(subject, exc) from None
