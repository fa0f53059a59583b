"""Concurrency limits: how many steps of a function (per key) run at once.

A function's `concurrency` limits the requests in progress on workers, not
its runs: each request holds one slot of each of its limits' keys from the
moment it is dispatched until its reply is committed (or the request ends
otherwise), so sleeps, waits for events, invokes, retry backoffs and the gaps
between steps hold none. The slots live in the store (`Store.acquire_slots`),
so every executor of a deployment counts the same ones and a restart loses
no request waiting for one.

Cost. The slots change with the run's own saves (`SlotChange`): the commit
that consumes a request's reply frees its slots, and the commit that creates
the request after it takes that request's slots (or its place in line) in
the same transaction. Only a run's first request, and a request that had to
wait, ask the store on their own (`SlotGrants.acquire`).

Keys. A limit without `key` counts the whole function. A `key` is a CEL
expression over the triggering event (one that only names a field,
`event.data.user_id`, is read without CEL); its value names a counter within the
limit's `scope`: `fn` (the default) per function, `env` and `account`
shared by every function whose key evaluates to the same value (this
platform has one environment and one account, so both are the whole
deployment; each function still blocks at its own `limit`). A key that
cannot be evaluated (a missing field, an error) counts under the key's empty
value: the run still waits its turn under the limit rather than failing or
escaping it. A `limit` of 0 or less is no limit, as the official server reads it
(registration refuses one, see `protocol.flow`).

Order. A request waiting for slots takes its place by its run's start time,
moved earlier by `priority.run` seconds (a CEL integer over the event,
clamped to -600..600; anything else is 0), then by run id: oldest runs first,
and a run's later steps ahead of younger runs' first.

Waiting spends no attempt. The executor learns of grants from the store's
`SLOTS_GRANTED` notifications and asks again every `SWEEP_S` seconds in case
one was lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from celpy import celtypes

from connect.executor.expressions import Expression
from connect.executor.grants import Grants
from connect.store.base import SLOTS_GRANTED, SlotClaim, Store
from connect.waiting import wait_event
from protocol.payloads import Event, FunctionConfig

log = logging.getLogger(__name__)

#: Bounds of `priority.run`, in seconds.
PRIORITY_MIN: Final = -600
PRIORITY_MAX: Final = 600
#: How often a request waiting for a slot asks the store again (a lost notification).
SWEEP_S: Final = 10.0
#: Key values longer than this are stored as their SHA-256.
KEY_MAX: Final = 200
#: Events whose claims and priority a function remembers (see `FunctionLimits`).
MEMO_MAX: Final = 4096


@dataclass(frozen=True, slots=True)
class Limit:
    limit: int
    scope: str
    key: Expression | None
    #: The key's fields when it is a plain path (`event.data.user_id`), read without CEL.
    path: tuple[str, ...] | None = None


#: A key that only names a field of the event: `event.data.user_id`.
_PATH = re.compile(r"event(\.[A-Za-z_][A-Za-z0-9_]*)+")


@dataclass(frozen=True, slots=True)
class FunctionLimits:
    """A function's concurrency limits and run priority, compiled.

    Every request of a run claims the same slots and takes the same place in
    line, so what its event evaluates to is remembered (by event id, for the
    last `MEMO_MAX` events, and used only for an equal event): a run of six
    requests evaluates its key and priority expressions once, not six times."""

    function_id: str
    limits: tuple[Limit, ...]
    priority: Expression | None
    _memo: dict[str, tuple[dict[str, Any], tuple[SlotClaim, ...], int]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def claims(self, event: dict[str, Any]) -> list[SlotClaim]:
        """The slots a request of a run triggered by `event` must hold."""
        return list(self._evaluated(event)[0])

    def order(self, started_at_ms: int, event: dict[str, Any]) -> int:
        """A waiting request's place in line (lower goes first)."""
        return started_at_ms - self._evaluated(event)[1] * 1000

    def _evaluated(self, event: dict[str, Any]) -> tuple[tuple[SlotClaim, ...], int]:
        event_id = event.get("id")
        memo = self._memo
        if isinstance(event_id, str) and event_id:
            found = memo.get(event_id)
            if found is not None and found[0] == event:
                return found[1], found[2]
        claims = tuple(self._claims(event))
        seconds = priority_seconds(self.priority, event)
        if isinstance(event_id, str) and event_id:
            if len(memo) >= MEMO_MAX:
                del memo[next(iter(memo))]
            memo[event_id] = (event, claims, seconds)
        return claims, seconds

    def _claims(self, event: dict[str, Any]) -> list[SlotClaim]:
        found: dict[str, int] = {}
        for item in self.limits:
            if item.path is not None:
                value = _path_value(item.path, event)
            else:
                value = "" if item.key is None else _key_value(item.key, event)
            key = f"fn:{self.function_id}:{value}" if item.scope == "fn" else f"{item.scope}:{value}"
            # The same counter twice: the lower limit is the one that binds.
            found[key] = min(item.limit, found.get(key, item.limit))
        return [SlotClaim(k, n) for k, n in found.items()]


def function_limits(fn: FunctionConfig) -> FunctionLimits | None:
    """What `fn` registered, ready to evaluate; None when it has no limit
    (the common case, which then costs nothing per step)."""
    limits: list[Limit] = []
    for item in fn.concurrency_limits:
        if item.limit <= 0:
            continue
        key = None
        path = None
        if item.key:
            try:
                key = Expression(item.key)
            except ValueError as exc:
                log.warning("function %s: concurrency key ignored, the limit counts every run: %s", fn.id, exc)
            else:
                path = tuple(item.key.split(".")[1:]) if _PATH.fullmatch(item.key) else None
        limits.append(Limit(item.limit, item.scope or "fn", key, path))
    if not limits:
        return None
    priority = None
    if fn.priority is not None and fn.priority.run:
        try:
            priority = Expression(fn.priority.run)
        except ValueError as exc:
            log.warning("function %s: priority ignored: %s", fn.id, exc)
    return FunctionLimits(fn.id, tuple(limits), priority)


def priority_seconds(expression: Expression | None, event: dict[str, Any]) -> int:
    """`priority.run` over `event`: whole seconds within the bounds; 0 for a
    result that is not an integer, or an expression that fails."""
    if expression is None:
        return 0
    try:
        value = expression.result(event)
    except ValueError:
        return 0
    if isinstance(value, celtypes.BoolType) or not isinstance(value, int):
        return 0
    return max(PRIORITY_MIN, min(PRIORITY_MAX, int(value)))


def as_dict(event: Event) -> dict[str, Any]:
    """The event as expressions see it."""
    return {"name": event.name, "data": event.data, "id": event.id, "ts": event.ts, "user": event.user}


def _key_value(expression: Expression, event: dict[str, Any]) -> str:
    try:
        value = expression.result(event)
    except ValueError:
        log.debug("concurrency key %r could not be evaluated; counted under its empty value", expression.text)
        return ""
    if isinstance(value, str):
        text = str(value)
    else:
        try:
            text = msgspec.json.encode(_plain(value)).decode()
        except (TypeError, msgspec.EncodeError):
            text = str(value)
    if len(text) > KEY_MAX:
        text = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return text


def _path_value(path: tuple[str, ...], event: dict[str, Any]) -> str:
    """What `_key_value` gives for the expression `event.<path>`, read straight
    from the event (CEL costs about 0.2 ms per evaluation; this, microseconds).
    A missing field, or a field of something that is not an object, is the
    empty value, as a CEL error is. (One difference: an event holding an
    integer beyond 64 bits, which CEL cannot read at all, keys on the field's
    value here instead of on the empty value.)"""
    value: Any = event
    for name in path:
        if not isinstance(value, dict) or name not in value:
            return ""
        value = value[name]
    if isinstance(value, str):
        text = value
    else:
        try:
            text = msgspec.json.encode(value).decode()
        except (TypeError, msgspec.EncodeError):
            text = str(value)
    if len(text) > KEY_MAX:
        text = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return text


def _plain(value: Any) -> Any:
    if isinstance(value, celtypes.BoolType):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return None if value is None else str(value)


class SlotGrants:
    """Acquiring slots, and waiting to be told they were granted (one per executor)."""

    def __init__(self, store: Store, *, sweep: float = SWEEP_S) -> None:
        self._store = store
        self._sweep = sweep
        self._grants = Grants(store, SLOTS_GRANTED)

    async def start(self) -> None:
        await self._grants.start()

    @property
    def waiting(self) -> int:
        """Requests of this executor waiting for slots now."""
        return len(self._grants)

    async def acquire(
        self, request_id: str, run_id: str, claims: Sequence[SlotClaim], order: int, *, timeout: float | None = None
    ) -> bool:
        """Hold the slots, waiting as long as it takes (up to `timeout` seconds:
        then False, the request still in line)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        with self._grants.waiting(request_id) as event:
            while True:
                event.clear()
                if await self._store.acquire_slots(request_id, run_id, claims, order):
                    return True
                wait = self._sweep if deadline is None else min(self._sweep, deadline - loop.time())
                if wait <= 0:
                    return False
                await wait_event(event, wait)
