"""A function's flow control at run start, as registered, and the gate each
new run gets from it: `throttle`, `rateLimit`, `idempotency` and `singleton`.

Read once per sync (`parse`), applied per event (`StartLimits.gate`): the
keys, CEL expressions over the triggering event (`event`), are evaluated
here; the decision is the store's, taken in the transaction that records the
run (`connect.store.start_gates`). A function with none of these options has
no `StartLimits`, and its runs no gate: they cost nothing more.

Semantics (those of Inngest):

* `throttle {limit, period, burst, key}`: at most `limit` runs start per
  `period` per key, `limit + burst` at once; the others wait their turn, in
  order, and are never dropped. A `limit` below 1 counts as 1. With a
  `priority {run}`, the runs waiting take the turns in the order of their
  start time moved earlier by the priority's seconds (see
  `connect.executor.concurrency.priority_seconds`), as Inngest's backlog does.
* `rateLimit {limit, period, key}`: at most `limit` runs per `period` per
  key (`limit` at once, then one each `period / limit`); an event over it
  starts no run: the event is stored and the skip recorded, with its reason.
* `idempotency` (a key expression): one run per key per 24 hours, a rate
  limit of 1 per 24 hours that replaces any `rateLimit`.
* `singleton {mode, key}`: one Running run per key; `skip` skips a new run
  while one is Running, `cancel` cancels the Running one (as the API's
  cancel does) and starts the new one.

No key is one key for the whole function. A key is the expression's value
as text; one that cannot be evaluated (a missing field) is the empty key. A
rate-limit, idempotency or singleton key that evaluates to `false` exempts
the event from that option. An option whose `period` or `limit` cannot be
read is left out with a warning (registration refuses such configs before
they get here).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final, Literal

from celpy import celtypes

from connect.executor.concurrency import as_dict, priority_seconds
from connect.executor.expressions import Expression, to_cel
from connect.store.start_gates import IDEMPOTENCY_PERIOD_MS, RateLimit, Singleton, StartGate, Throttle
from protocol.durations import parse_duration
from protocol.payloads import Event, FunctionConfig

log = logging.getLogger(__name__)

#: A key that exempts the event from the option it belongs to.
_EXEMPT: Final = None


@dataclass(frozen=True)
class _Key:
    """A key expression (None: the whole function)."""

    expression: Expression | None

    def value(self, activation: dict[str, Any] | None, *, exempt_on_false: bool) -> str | None:
        if self.expression is None or activation is None:
            return ""
        result = self.expression.value(activation)
        if result is None:
            return ""
        if isinstance(result, celtypes.BoolType):
            if not result and exempt_on_false:
                return _EXEMPT
            return "true" if result else "false"
        return str(result)


@dataclass(frozen=True)
class _Throttle:
    limit: int
    period_ms: int
    burst: int
    key: _Key
    #: The function's `priority.run` (None: no priority; the runs it holds back
    #: start in the order they came).
    priority: Expression | None = None


@dataclass(frozen=True)
class _RateLimit:
    limit: int
    period_ms: int
    key: _Key
    idempotency: bool


@dataclass(frozen=True)
class _Singleton:
    mode: Literal["skip", "cancel"]
    key: _Key


@dataclass(frozen=True)
class StartLimits:
    """The start-time flow control of one function."""

    function_id: str
    throttle: _Throttle | None
    rate_limit: _RateLimit | None
    singleton: _Singleton | None

    @property
    def ordered(self) -> bool:
        """Whether runs the throttle holds back take its turns in priority order."""
        return self.throttle is not None and self.throttle.priority is not None

    def gate(self, run_id: str, event: Event, started_at_ms: int = 0) -> StartGate | None:
        """The gate the new run `run_id`, started by `event` at `started_at_ms`,
        must pass (None: it is exempt from every option)."""
        keyed = any(
            option is not None and option.key.expression is not None
            for option in (self.throttle, self.rate_limit, self.singleton)
        )
        activation = _activation(event) if keyed else None
        throttle = rate_limit = singleton = None
        if self.throttle is not None:
            t = self.throttle
            key = t.key.value(activation, exempt_on_false=False) or ""
            order = None
            if t.priority is not None:
                order = started_at_ms - priority_seconds(t.priority, as_dict(event)) * 1000
            throttle = Throttle(key, t.limit, t.period_ms, t.burst, order)
        if self.rate_limit is not None:
            r = self.rate_limit
            rate_key = r.key.value(activation, exempt_on_false=True)
            if rate_key is not None:
                rate_limit = RateLimit(rate_key, r.limit, r.period_ms, r.idempotency)
        if self.singleton is not None:
            singleton_key = self.singleton.key.value(activation, exempt_on_false=True)
            if singleton_key is not None:
                singleton = Singleton(singleton_key, self.singleton.mode)
        if throttle is None and rate_limit is None and singleton is None:
            return None
        return StartGate(run_id, self.function_id, throttle, rate_limit, singleton)


def parse(fn: FunctionConfig) -> StartLimits | None:
    """`fn`'s start-time flow control; None when it has none."""
    if fn.throttle is None and fn.rateLimit is None and fn.idempotency is None and fn.singleton is None:
        return None
    throttle = rate_limit = singleton = None
    if fn.throttle is not None:
        period = _period_ms(fn.id, "throttle", fn.throttle.period)
        key = _key(fn.id, "throttle", fn.throttle.key)
        if period is not None and key is not None:
            priority = _key(fn.id, "priority", fn.priority.run if fn.priority is not None else None)
            throttle = _Throttle(
                max(fn.throttle.limit, 1),
                period,
                max(fn.throttle.burst or 0, 0),
                key,
                None if priority is None else priority.expression,
            )
    if fn.idempotency is not None:
        key = _key(fn.id, "idempotency", fn.idempotency)
        if key is not None:
            rate_limit = _RateLimit(1, IDEMPOTENCY_PERIOD_MS, key, idempotency=True)
    elif fn.rateLimit is not None:
        period = _period_ms(fn.id, "rateLimit", fn.rateLimit.period)
        key = _key(fn.id, "rateLimit", fn.rateLimit.key)
        if fn.rateLimit.limit < 1:
            log.warning("function %s: rateLimit limit %r is below 1; ignored", fn.id, fn.rateLimit.limit)
        elif period is not None and key is not None:
            rate_limit = _RateLimit(fn.rateLimit.limit, period, key, idempotency=False)
    if fn.singleton is not None:
        key = _key(fn.id, "singleton", fn.singleton.key)
        if key is not None:
            singleton = _Singleton(fn.singleton.mode, key)
    if throttle is None and rate_limit is None and singleton is None:
        return None
    return StartLimits(fn.id, throttle, rate_limit, singleton)


def _period_ms(fn_id: str, option: str, value: str) -> int | None:
    seconds = parse_duration(value) if isinstance(value, str) else None
    if seconds is None or seconds <= 0:
        log.warning('function %s: %s period %r is not a duration such as "30s"; ignored', fn_id, option, value)
        return None
    return int(seconds * 1000)


def _key(fn_id: str, option: str, text: str | None) -> _Key | None:
    if not text:
        return _Key(None)
    try:
        return _Key(Expression(text))
    except ValueError as exc:
        log.warning("function %s: %s ignored: %s", fn_id, option, exc)
        return None


def _activation(event: Event) -> dict[str, Any]:
    return {
        "event": to_cel({"name": event.name, "data": event.data, "id": event.id, "ts": event.ts, "user": event.user})
    }
