"""Flow control of a registered function: the bounds of each option, and the
check a function's config must pass to be served.

The bounds are the ones Inngest documents and its server enforces, plus the
few this platform needs (the largest batch); our SDK checks the same ones when
a function is defined (`connect.sdk.flow`), so a function it accepts is never
refused here. Every form the official SDKs send is read: `concurrency` as a
number, an object or an array (`[]` meaning none); `throttle.burst` sent as 1
(Python) or left out (TypeScript); durations as strings such as `"5s"`,
`"1h30m"` or `"2d"` (`protocol.durations.parse_duration`).

A key, `if` or `priority.run` is a CEL expression over the triggering event.
Here it must only not be blank (this layer does no CEL; our SDK checks its
syntax when the function is defined).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from protocol.durations import parse_duration

if TYPE_CHECKING:
    from protocol.payloads import FunctionConfig

#: The most limits `concurrency` may hold.
MAX_CONCURRENCY_LIMITS: Final = 2
#: Scopes that share a limit beyond one function: they need a `key`.
SHARED_SCOPES: Final = frozenset({"env", "account"})

#: `throttle.period`, in seconds: 1 s to 7 days.
THROTTLE_PERIOD_MIN: Final = 1.0
THROTTLE_PERIOD_MAX: Final = 7 * 86400.0
#: `rateLimit.period`, in seconds: 1 s to 24 hours.
RATE_LIMIT_PERIOD_MIN: Final = 1.0
RATE_LIMIT_PERIOD_MAX: Final = 86400.0
#: `debounce.period` and `debounce.timeout`, in seconds: 1 s to 7 days.
DEBOUNCE_PERIOD_MIN: Final = 1.0
DEBOUNCE_PERIOD_MAX: Final = 7 * 86400.0
#: `batchEvents.maxSize`: at least 2 (one event is no batch); at most 1,000,
#: because a batch's events travel in one request to the worker.
BATCH_SIZE_MIN: Final = 2
BATCH_SIZE_MAX: Final = 1000
#: `batchEvents.timeout` (required), in seconds: 1 s to 7 days.
BATCH_TIMEOUT_MIN: Final = 1.0
BATCH_TIMEOUT_MAX: Final = 7 * 86400.0
#: What `priority.run` may add to or take from a run's place in a queue, in seconds.
PRIORITY_MIN: Final = -600
PRIORITY_MAX: Final = 600

#: Options a function with `batchEvents` may not have. Inngest's server refuses
#: the first four; its documentation says batching cannot be used with the last
#: two either (its server takes them and applies neither to batched events), so
#: they are refused too rather than accepted and not honoured.
NOT_WITH_BATCHING: Final = ("cancel", "debounce", "singleton", "priority.run", "rateLimit", "idempotency")


def seconds_text(seconds: float) -> str:
    """`604800.0` -> `"7d"`, `86400.0` -> `"24h"`: a bound as the messages write it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds > size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def flow_problem(fn: FunctionConfig) -> str | None:
    """What makes the flow control of `fn` unusable, or None.

    The text names the option by its wire name and says what is wrong, e.g.
    ``invalid config: `throttle.period` must be from 1s to 7d, got '8d'``.
    """
    for check in (_concurrency, _throttle, _rate_limit, _idempotency, _debounce, _batch, _priority, _singleton):
        problem = check(fn)
        if problem is not None:
            return f"invalid config: {problem}"
    return None


def _concurrency(fn: FunctionConfig) -> str | None:
    limits = fn.concurrency_limits
    if len(limits) > MAX_CONCURRENCY_LIMITS:
        return f"`concurrency` holds at most {MAX_CONCURRENCY_LIMITS} limits, got {len(limits)}"
    many = isinstance(fn.concurrency, list)
    for i, limit in enumerate(limits):
        where = f"concurrency[{i}]" if many else "concurrency"
        if limit.limit < 1:
            return f"`{where}.limit` must be at least 1 (leave `concurrency` out for no limit), got {limit.limit}"
        problem = _key(f"{where}.key", limit.key)
        if problem is not None:
            return problem
        if limit.scope in SHARED_SCOPES and limit.key is None:
            return (
                f"`{where}` with scope {limit.scope!r} needs a `key` "
                "(the limit is shared by the functions whose key is the same)"
            )
    return None


def _throttle(fn: FunctionConfig) -> str | None:
    throttle = fn.throttle
    if throttle is None:
        return None
    if throttle.limit < 1:
        return f"`throttle.limit` must be at least 1, got {throttle.limit}"
    if throttle.burst is not None and throttle.burst < 0:
        return f"`throttle.burst` must not be negative, got {throttle.burst}"
    return _period("throttle.period", throttle.period, THROTTLE_PERIOD_MIN, THROTTLE_PERIOD_MAX) or _key(
        "throttle.key", throttle.key
    )


def _rate_limit(fn: FunctionConfig) -> str | None:
    rate = fn.rateLimit
    if rate is None:
        return None
    if rate.limit < 1:
        return f"`rateLimit.limit` must be at least 1, got {rate.limit}"
    return _period("rateLimit.period", rate.period, RATE_LIMIT_PERIOD_MIN, RATE_LIMIT_PERIOD_MAX) or _key(
        "rateLimit.key", rate.key
    )


def _idempotency(fn: FunctionConfig) -> str | None:
    return _key("idempotency", fn.idempotency)


def _debounce(fn: FunctionConfig) -> str | None:
    debounce = fn.debounce
    if debounce is None:
        return None
    return (
        _period("debounce.period", debounce.period, DEBOUNCE_PERIOD_MIN, DEBOUNCE_PERIOD_MAX)
        or _period("debounce.timeout", debounce.timeout, DEBOUNCE_PERIOD_MIN, DEBOUNCE_PERIOD_MAX)
        or _key("debounce.key", debounce.key)
    )


def _batch(fn: FunctionConfig) -> str | None:
    batch = fn.batchEvents
    if batch is None:
        return None
    if not BATCH_SIZE_MIN <= batch.maxSize <= BATCH_SIZE_MAX:
        return f"`batchEvents.maxSize` must be from {BATCH_SIZE_MIN} to {BATCH_SIZE_MAX}, got {batch.maxSize}"
    if batch.timeout is None:
        return '`batchEvents.timeout` is required (how long a batch waits to fill, such as "5s")'
    problem = (
        _period("batchEvents.timeout", batch.timeout, BATCH_TIMEOUT_MIN, BATCH_TIMEOUT_MAX)
        or _key("batchEvents.key", batch.key)
        or _key("batchEvents.if", batch.if_)
    )
    if problem is not None:
        return problem
    clashes = batching_clashes(
        cancel=bool(fn.cancel),
        debounce=fn.debounce is not None,
        singleton=fn.singleton is not None,
        priority_run=fn.priority is not None and fn.priority.run is not None,
        rate_limit=fn.rateLimit is not None,
        idempotency=bool(fn.idempotency),
    )
    if clashes:
        return f"`batchEvents` cannot be combined with {', '.join(f'`{name}`' for name in clashes)}"
    return None


def batching_clashes(
    *,
    cancel: bool,
    debounce: bool,
    singleton: bool,
    priority_run: bool,
    rate_limit: bool = False,
    idempotency: bool = False,
) -> list[str]:
    """Which of `NOT_WITH_BATCHING` a batched function has (each given as present or not)."""
    present = {
        "cancel": cancel,
        "debounce": debounce,
        "singleton": singleton,
        "priority.run": priority_run,
        "rateLimit": rate_limit,
        "idempotency": idempotency,
    }
    return [name for name in NOT_WITH_BATCHING if present[name]]


def _priority(fn: FunctionConfig) -> str | None:
    return None if fn.priority is None else _key("priority.run", fn.priority.run)


def _singleton(fn: FunctionConfig) -> str | None:
    return None if fn.singleton is None else _key("singleton.key", fn.singleton.key)


def _period(where: str, value: str | None, low: float, high: float) -> str | None:
    if value is None:
        return None
    seconds = parse_duration(value)
    if seconds is None:
        return f'`{where}` must be a duration such as "30s", "1h30m" or "2d", got {value!r}'
    if not low <= seconds <= high:
        return f"`{where}` must be from {seconds_text(low)} to {seconds_text(high)}, got {value!r}"
    return None


def _key(where: str, value: str | None) -> str | None:
    """An expression that is given must say something (the executor compiles it)."""
    if value is not None and not value.strip():
        return f"`{where}` is empty: give an expression such as `event.data.user_id`, or leave it out"
    return None
