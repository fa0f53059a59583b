"""Flow-control options of a function: how many of its steps run at once, how
fast its runs start, and which events start one.

The types and their fields are the official Python SDK's (``inngest.Concurrency``,
``inngest.Throttle``, ...), so functions port by changing imports; they
register exactly as that SDK registers them. Each one checks itself when it is
built and raises ``FunctionConfigError`` naming the type, the field and what is
wrong; the bounds are those the platform enforces when a function registers
(``protocol.flow``), so a function this SDK accepts is never refused there.
How options combine (at most two concurrency limits, batching alone) is
checked by ``create_function``.

Durations are ``int`` milliseconds or ``datetime.timedelta``, whole seconds.
Keys, ``if_exp`` and ``Priority.run`` are CEL expressions over ``event`` (the
triggering event), checked for syntax here; e.g. ``"event.data.user_id"``, or a
quoted string such as ``'"openai"'`` for one key shared by several functions.
"""

from __future__ import annotations

import datetime
from dataclasses import KW_ONLY, dataclass
from typing import Final, Literal

from connect.sdk.durations import to_duration_string
from connect.sdk.errors import FunctionConfigError
from connect.sdk.validation import cel_problem
from protocol import flow
from protocol.payloads import (
    BatchEventsConfig,
    ConcurrencyLimit,
    DebounceConfig,
    PriorityConfig,
    RateLimitConfig,
    SingletonConfig,
    ThrottleConfig,
)

Duration = int | datetime.timedelta  # int = milliseconds
ConcurrencyScope = Literal["account", "env", "fn"]
SingletonMode = Literal["skip", "cancel"]

_SCOPES: Final = ("account", "env", "fn")
_MODES: Final = ("skip", "cancel")


@dataclass(frozen=True)
class Concurrency:
    """At most ``limit`` steps of the function in progress at once.

    Steps, not runs: a run sleeping or waiting for an event holds no slot.
    With ``key``, the limit applies per value of the key (``"event.data.user_id"``:
    ``limit`` steps per user). ``scope`` says who shares it: ``"fn"`` (the
    default) this function; ``"env"`` every function of the environment
    whose key evaluates the same; ``"account"`` likewise across environments.
    ``"env"`` and ``"account"`` need a ``key``. Steps over the limit wait in
    order (oldest run first); they never fail and spend no retry.
    """

    limit: int
    key: str | None = None
    scope: ConcurrencyScope | None = None

    def __post_init__(self) -> None:
        _count("Concurrency.limit", self.limit, 1)
        _expression("Concurrency.key", self.key)
        if self.scope is not None and self.scope not in _SCOPES:
            raise FunctionConfigError(f"Concurrency.scope: must be one of {', '.join(_SCOPES)}, got {self.scope!r}")
        if self.scope in flow.SHARED_SCOPES and self.key is None:
            raise FunctionConfigError(
                f"Concurrency.key: is required with scope {self.scope!r} "
                "(the limit is shared by the functions whose key is the same)"
            )

    def to_wire(self) -> ConcurrencyLimit:
        return ConcurrencyLimit(limit=self.limit, key=self.key, scope=self.scope)


@dataclass(frozen=True)
class Throttle:
    """At most ``limit`` runs start per ``period`` (1 s to 7 days), per ``key`` if given.

    Runs over it wait their turn and start later, in order; none is dropped.
    ``burst`` more may start at once after a quiet spell (the official SDK's
    default, 1).
    """

    limit: int
    period: Duration
    burst: int | None = 1
    key: str | None = None

    def __post_init__(self) -> None:
        _count("Throttle.limit", self.limit, 1)
        _period("Throttle.period", self.period, flow.THROTTLE_PERIOD_MIN, flow.THROTTLE_PERIOD_MAX)
        if self.burst is not None:
            _count("Throttle.burst", self.burst, 0)
        _expression("Throttle.key", self.key)

    def to_wire(self) -> ThrottleConfig:
        return ThrottleConfig(limit=self.limit, period=to_duration_string(self.period), key=self.key, burst=self.burst)


@dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` runs per ``period`` (1 s to 24 hours), per ``key`` if given.

    Events over it start no run (they are still stored, and the skip is recorded).
    """

    limit: int
    period: Duration
    key: str | None = None

    def __post_init__(self) -> None:
        _count("RateLimit.limit", self.limit, 1)
        _period("RateLimit.period", self.period, flow.RATE_LIMIT_PERIOD_MIN, flow.RATE_LIMIT_PERIOD_MAX)
        _expression("RateLimit.key", self.key)

    def to_wire(self) -> RateLimitConfig:
        return RateLimitConfig(limit=self.limit, period=to_duration_string(self.period), key=self.key)


@dataclass(frozen=True)
class Debounce:
    """One run, with the last event, once ``period`` passed with no new event (per ``key``).

    ``period`` is 1 s to 7 days; ``timeout`` (same bounds) caps how long after
    the first event the run starts, however often events keep coming.
    """

    period: Duration
    key: str | None = None
    timeout: Duration | None = None

    def __post_init__(self) -> None:
        _period("Debounce.period", self.period, flow.DEBOUNCE_PERIOD_MIN, flow.DEBOUNCE_PERIOD_MAX)
        _expression("Debounce.key", self.key)
        if self.timeout is not None:
            _period("Debounce.timeout", self.timeout, flow.DEBOUNCE_PERIOD_MIN, flow.DEBOUNCE_PERIOD_MAX)

    def to_wire(self) -> DebounceConfig:
        timeout = None if self.timeout is None else to_duration_string(self.timeout)
        return DebounceConfig(period=to_duration_string(self.period), key=self.key, timeout=timeout)


@dataclass(frozen=True)
class Batch:
    """One run for up to ``max_size`` events (2 to 1,000), per ``key`` if given.

    A batch opens with its first event and starts its run once full, or with
    what it has once ``timeout`` (1 s to 7 days; required, although typed
    optional as in the official SDK) has passed. ``ctx.events`` holds the
    batch's events in order, ``ctx.event`` the first. An event for which
    ``if_exp`` is not true runs alone, at once. A batched function may not
    also have ``cancel``, ``debounce``, ``singleton`` or ``Priority.run``.
    """

    max_size: int
    timeout: Duration | None = None
    key: str | None = None
    if_exp: str | None = None

    def __post_init__(self) -> None:
        _count("Batch.max_size", self.max_size, flow.BATCH_SIZE_MIN, flow.BATCH_SIZE_MAX)
        if self.timeout is None:
            raise FunctionConfigError(
                "Batch.timeout: is required (how long a batch waits to fill), got None; "
                "e.g. timeout=datetime.timedelta(seconds=5)"
            )
        _period("Batch.timeout", self.timeout, flow.BATCH_TIMEOUT_MIN, flow.BATCH_TIMEOUT_MAX)
        _expression("Batch.key", self.key)
        _expression("Batch.if_exp", self.if_exp)

    def to_wire(self) -> BatchEventsConfig:
        timeout = None if self.timeout is None else to_duration_string(self.timeout)
        return BatchEventsConfig(maxSize=self.max_size, timeout=timeout, key=self.key, if_=self.if_exp)


@dataclass(frozen=True)
class Priority:
    """``run``: a CEL expression giving seconds (-600 to 600) by which a run moves
    ahead of (positive) or behind (negative) the runs queued before it, e.g.
    ``"event.data.plan == 'pro' ? 120 : 0"``. It matters while runs wait, for a
    concurrency limit or a throttle."""

    run: str | None = None

    def __post_init__(self) -> None:
        _expression("Priority.run", self.run)

    def to_wire(self) -> PriorityConfig:
        return PriorityConfig(run=self.run)


@dataclass(frozen=True)
class Singleton:
    """At most one run of the function at a time, per ``key`` if given.

    ``mode="skip"``: an event arriving while a run is active starts none (the
    skip is recorded). ``mode="cancel"``: the active run is cancelled and the
    new one starts. ``mode`` is keyword-only and required.
    """

    key: str | None = None
    _: KW_ONLY
    mode: SingletonMode

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise FunctionConfigError(f"Singleton.mode: must be 'skip' or 'cancel', got {self.mode!r}")
        _expression("Singleton.key", self.key)

    def to_wire(self) -> SingletonConfig:
        return SingletonConfig(mode=self.mode, key=self.key)


def _count(where: str, value: object, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FunctionConfigError(f"{where}: must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"from {low} to {high}"
        raise FunctionConfigError(f"{where}: must be {bounds}, got {value!r}")


def _period(where: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | datetime.timedelta):
        raise FunctionConfigError(f"{where}: must be int milliseconds or a timedelta, got {value!r}")
    millis = value if isinstance(value, int) else value // datetime.timedelta(milliseconds=1)
    exact = isinstance(value, int) or value % datetime.timedelta(milliseconds=1) == datetime.timedelta(0)
    if not exact or millis % 1000:
        raise FunctionConfigError(f"{where}: must be a whole number of seconds, got {value!r}")
    if not low <= millis / 1000 <= high:
        raise FunctionConfigError(
            f"{where}: must be from {flow.seconds_text(low)} to {flow.seconds_text(high)}, got {value!r}"
        )


def _expression(where: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise FunctionConfigError(f"{where}: must be a non-empty CEL expression or None, got {value!r}")
    problem = cel_problem(value)
    if problem is not None:
        raise FunctionConfigError(f"{where}: {problem}, got {value!r}")
