"""A function's options: the model that validates them all, and the option types.

``FunctionOptions`` is what ``create_function`` checks its keyword arguments
against, once, when the function is defined (never per step): each field is
named as the argument is, and a bad value raises ``FunctionConfigError``
naming that field, e.g. ``greet: retries: input should be less than or equal
to 20, got 25``. A new option is one more field here, with the official SDK's
name and type, plus its registration shape in ``Function.config``.

``Cancel`` and ``Timeouts`` (here) and the flow-control types
(``connect.sdk.flow``) validate themselves on construction
(``FunctionConfigError`` for a bad value) and know their registration shape;
how options combine is checked here (``FunctionOptions.checked``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from connect.sdk.durations import to_duration_string
from connect.sdk.errors import FunctionConfigError
from connect.sdk.flow import Batch, Concurrency, Debounce, Duration, Priority, RateLimit, Singleton, Throttle
from connect.sdk.triggers import AnyTrigger, TriggerCron, TriggerEvent
from connect.sdk.validation import NonBlank, cel_problem, config_error, instance_of
from protocol import flow

MAX_RETRIES: Final = 20


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
        if self.if_exp is not None and (problem := cel_problem(self.if_exp)) is not None:
            raise FunctionConfigError(f"Cancel.if_exp: {problem}, got {self.if_exp!r}")
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


def _limits(value: object) -> object:
    """``concurrency=`` takes a list of ``Concurrency`` (as the official SDK does)."""
    if isinstance(value, Concurrency):
        raise ValueError("must be a list of Concurrency (one or two limits), got one Concurrency")
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError(f"must be a list of Concurrency, got {type(value).__name__}")
    return tuple(value)


#: The options of `flow.NOT_WITH_BATCHING` as ``create_function`` names them.
_SDK_NAMES: Final = {"rateLimit": "rate_limit"}


def _cel(value: str) -> str:
    problem = cel_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


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
    concurrency: Annotated[tuple[Annotated[Any, instance_of(Concurrency)], ...], BeforeValidator(_limits)] = ()
    throttle: Annotated[Any, instance_of(Throttle)] | None = None
    rate_limit: Annotated[Any, instance_of(RateLimit)] | None = None
    debounce: Annotated[Any, instance_of(Debounce)] | None = None
    batch_events: Annotated[Any, instance_of(Batch)] | None = None
    priority: Annotated[Any, instance_of(Priority)] | None = None
    #: A CEL key: one run per value of it per 24 hours.
    idempotency: Annotated[NonBlank, AfterValidator(_cel)] | None = None
    singleton: Annotated[Any, instance_of(Singleton)] | None = None

    @property
    def triggers(self) -> tuple[AnyTrigger, ...]:
        return self.trigger

    @classmethod
    def checked(cls, **options: Any) -> FunctionOptions:
        """The options validated, or ``FunctionConfigError`` naming each field that is wrong."""
        for name in ("cancel", "concurrency"):
            if options.get(name) is None:
                options[name] = ()
        fn_id = options.get("fn_id")
        subject = fn_id if isinstance(fn_id, str) and fn_id.strip() else "function"
        try:
            checked = cls.model_validate(options)
        except ValidationError as exc:
            raise config_error(subject, exc) from None
        problem = checked._combination_problem()
        if problem is not None:
            raise FunctionConfigError(f"{subject}: {problem}")
        return checked

    def _combination_problem(self) -> str | None:
        """What is wrong with the options together (each one alone being fine), or None."""
        if len(self.concurrency) > flow.MAX_CONCURRENCY_LIMITS:
            return f"concurrency: at most {flow.MAX_CONCURRENCY_LIMITS} limits, got {len(self.concurrency)}"
        if self.batch_events is None:
            return None
        clashes = flow.batching_clashes(
            cancel=bool(self.cancel),
            debounce=self.debounce is not None,
            singleton=self.singleton is not None,
            priority_run=self.priority is not None and self.priority.run is not None,
            rate_limit=self.rate_limit is not None,
            idempotency=bool(self.idempotency),
        )
        if clashes:
            names = ", ".join(_SDK_NAMES.get(name, name) for name in clashes)
            return f"batch_events: cannot be combined with {names}"
        return None
