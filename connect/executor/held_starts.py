"""Debounce and event batching as registered: which events a function holds
back instead of starting a run at once, and under which key.

`rule_of` reads a function's `debounce` (`{period, key?, timeout?}`) or
`batchEvents` (`{maxSize, timeout, key?, if?}`) once per sync, with durations
as the SDKs send them ("5s", "1m30s", "2h"). `hold_for` decides for one
event: the `Hold` the store applies to the held start of (function, key)
in the transaction that records the event (see `connect.store.held_starts`
for what that does and when the run starts), or None when the event starts
its run at once (a batch whose `if` is not true for it).

A key is a CEL expression over the event (`event.data.user_id`); its value,
as text (JSON for anything but a string), names the held start. No key, or a
key that cannot be evaluated for the event (a missing field), is the
function's one shared held start (key "").
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Final

from celpy.adapter import json_to_cel

from connect.executor.expressions import Expression
from connect.store.base import BATCH, DEBOUNCE, Hold
from protocol.durations import parse_duration
from protocol.payloads import FunctionConfig

log = logging.getLogger(__name__)

#: A batch without a timeout in its config closes this long after it opened
#: (the SDKs require one; this only keeps a malformed registration from
#: holding events forever).
DEFAULT_BATCH_TIMEOUT_MS: Final = 60_000


@dataclass(frozen=True)
class HeldRule:
    """A function's debounce or batch, ready to apply to events."""

    kind: str  # DEBOUNCE / BATCH
    period_ms: int = 0
    timeout_ms: int | None = None
    max_size: int = 0
    key: Expression | None = None
    condition: Expression | None = None  # a batch's `if`


def rule_of(fn: FunctionConfig) -> HeldRule | None:
    """The function's debounce or batch rule; None when it has neither. An
    option that cannot be read (a duration that does not parse, a key that is
    not CEL) is logged and the function starts its runs at once, as
    registration refuses such configs before they get here."""
    try:
        if fn.debounce is not None:
            period = _ms(fn.debounce.period, "debounce.period")
            timeout = None if fn.debounce.timeout is None else _ms(fn.debounce.timeout, "debounce.timeout")
            return HeldRule(DEBOUNCE, period_ms=period, timeout_ms=timeout, key=_expression(fn.debounce.key))
        if fn.batchEvents is not None:
            batch = fn.batchEvents
            timeout = DEFAULT_BATCH_TIMEOUT_MS if batch.timeout is None else _ms(batch.timeout, "batchEvents.timeout")
            return HeldRule(
                BATCH,
                timeout_ms=timeout,
                max_size=max(batch.maxSize, 1),
                key=_expression(batch.key),
                condition=_expression(batch.if_),
            )
    except ValueError as exc:
        log.warning("function %s: %s; its runs start at once", fn.id, exc)
    return None


def hold_for(rule: HeldRule, function_id: str, app_name: str, max_attempts: int, event: dict[str, Any]) -> Hold | None:
    """What to hold `event` (as a dict: name, data, id, ts, user) under for a
    function with `rule`; None when the event starts its run at once."""
    activation: dict[str, Any] | None = None
    if rule.condition is not None or rule.key is not None:
        activation = {"event": json_to_cel(event)}
    if rule.condition is not None:
        assert activation is not None
        if not rule.condition.evaluate(activation):
            return None
    key = ""
    if rule.key is not None:
        assert activation is not None
        value = rule.key.value(activation)
        key = "" if value is None else _key_text(value)
    return Hold(
        kind=rule.kind,
        function_id=function_id,
        app_name=app_name,
        key=key,
        max_attempts=max_attempts,
        period_ms=rule.period_ms,
        timeout_ms=rule.timeout_ms,
        max_size=rule.max_size,
    )


def _key_text(value: Any) -> str:
    if isinstance(value, str):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)


def _ms(text: str, what: str) -> int:
    seconds = parse_duration(text) if isinstance(text, str) else None
    if seconds is None:
        raise ValueError(f'{what} {text!r} is not a duration such as "30s"')
    return int(seconds * 1000)


def _expression(text: str | None) -> Expression | None:
    if not text:
        return None
    return Expression(text)
