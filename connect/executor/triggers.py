"""Which functions an event starts, and what the executor knows of each function.

The index is rebuilt from the registered apps whenever one of them syncs
(rare), so matching an event (frequent) is a dictionary lookup for the exact
name plus one lookup per `/` in the name for wildcard triggers: a trigger
`app/*` matches `app/x` and `app/x/y` but not `app`. A lone `*` matches
every event. Functions are never scanned one by one (except the rare
wildcards whose prefix does not end at a `/`, such as `app/x*`).

Cron triggers start nothing here (they are not events); `crons()` lists
them for the scheduler. A trigger whose `expression` is not valid CEL (or a
cron that does not parse) is logged and left out, so a typo never starts
runs it was meant to filter.

`lookup(function_id)` gives what running a function needs beyond its
triggers: its `cancel` conditions, `timeouts` and flow control at run start
(`connect.executor.start_limits`; its debounce or batch rule,
`connect.executor.held_starts`), read once per sync.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Final, NamedTuple

import msgspec

from connect.executor.concurrency import FunctionLimits, function_limits
from connect.executor.cron import CronSchedule
from connect.executor.expressions import Expression
from connect.executor.held_starts import HeldRule, rule_of
from connect.executor.start_limits import StartLimits
from connect.executor.start_limits import parse as parse_start_limits
from protocol.durations import parse_duration
from protocol.payloads import Event, FunctionConfig, TimeoutsConfig

log = logging.getLogger(__name__)

#: The most retries a function may ask for (more are capped).
MAX_RETRIES: Final = 20


class Target(msgspec.Struct, frozen=True):
    """A function an event may start, with what a new run of it needs."""

    app_name: str
    function_id: str  # fully qualified
    max_attempts: int
    #: Debounced or batched: its events are held (`FunctionInfo.held`) rather than start runs.
    held: bool = False


class CancelOn(msgspec.Struct, frozen=True):
    """A `cancel` condition: an event named `event` for which `expression` holds
    (`event` = the run's trigger, `async` = the candidate), within `timeout_ms`
    of the run's start (None: for as long as the run lives)."""

    event: str
    expression: str | None
    timeout_ms: int | None


class FunctionInfo(msgspec.Struct, frozen=True):
    """A registered function as the executor runs it."""

    target: Target
    cancel: tuple[CancelOn, ...] = ()
    start_timeout_ms: int | None = None
    finish_timeout_ms: int | None = None
    #: Throttle, rate limit, idempotency and singleton (None: none of them).
    start_limits: StartLimits | None = None
    #: Debounce or event batch (None: neither).
    held: HeldRule | None = None
    #: Its concurrency limits and priority (None: none, nothing to do per step).
    limits: FunctionLimits | None = None


class _Entry(NamedTuple):
    target: Target
    expression: Expression | None


class TriggerIndex:
    """Event name -> functions, by exact name and by wildcard prefix."""

    def __init__(self, default_retries: int = 4) -> None:
        self._default_retries = default_retries
        self._apps: dict[str, list[FunctionConfig]] = {}
        self._exact: dict[str, list[_Entry]] = {}
        self._prefix: dict[str, list[_Entry]] = {}
        self._loose: list[tuple[str, _Entry]] = []
        self._functions: dict[str, FunctionInfo] = {}
        self._crons: list[tuple[FunctionInfo, CronSchedule]] = []

    def set_app(self, app_name: str, functions: Iterable[FunctionConfig]) -> None:
        """Replace everything `app_name` registered before with `functions`."""
        self._apps[app_name] = list(functions)
        self._rebuild()

    def functions(self, app_name: str) -> list[FunctionConfig] | None:
        return self._apps.get(app_name)

    def lookup(self, function_id: str) -> FunctionInfo | None:
        """A registered function by fully-qualified id (any app)."""
        return self._functions.get(function_id)

    def crons(self) -> list[tuple[FunctionInfo, CronSchedule]]:
        """Every cron trigger of every registered function."""
        return list(self._crons)

    def match(self, event: Event) -> list[Target]:
        """The functions `event` starts, each once."""
        name = event.name
        candidates: list[_Entry] = list(self._exact.get(name, ()))
        candidates.extend(self._prefix.get("", ()))
        start = 0
        while (slash := name.find("/", start)) != -1:
            candidates.extend(self._prefix.get(name[: slash + 1], ()))
            start = slash + 1
        candidates.extend(entry for p, entry in self._loose if name.startswith(p))
        if not candidates:
            return []
        seen: set[str] = set()
        targets: list[Target] = []
        as_dict: dict[str, Any] | None = None
        for entry in candidates:
            if entry.target.function_id in seen:
                continue
            if entry.expression is not None:
                if as_dict is None:
                    as_dict = {
                        "name": event.name,
                        "data": event.data,
                        "id": event.id,
                        "ts": event.ts,
                        "user": event.user,
                    }
                if not entry.expression.matches(as_dict):
                    continue
            seen.add(entry.target.function_id)
            targets.append(entry.target)
        return targets

    def _rebuild(self) -> None:
        exact: dict[str, list[_Entry]] = {}
        prefix: dict[str, list[_Entry]] = {}
        loose: list[tuple[str, _Entry]] = []
        infos: dict[str, FunctionInfo] = {}
        crons: list[tuple[FunctionInfo, CronSchedule]] = []
        for app_name, functions in self._apps.items():
            for fn in functions:
                retries = fn.retries if fn.retries is not None else self._default_retries
                held = rule_of(fn)
                target = Target(app_name, fn.id, min(max(retries, 0), MAX_RETRIES) + 1, held is not None)
                info = _info(target, fn, held)
                infos[fn.id] = info
                for trigger in fn.triggers:
                    if trigger.cron:
                        try:
                            crons.append((info, CronSchedule(trigger.cron)))
                        except ValueError as exc:
                            log.warning("function %s: cron trigger ignored: %s", fn.id, exc)
                        continue
                    if not trigger.event:
                        continue
                    expression = None
                    if trigger.expression:
                        try:
                            expression = Expression(trigger.expression)
                        except ValueError as exc:
                            log.warning("function %s: trigger on %r ignored: %s", fn.id, trigger.event, exc)
                            continue
                    entry = _Entry(target, expression)
                    if trigger.event.endswith("*"):
                        # "app/*" -> prefix "app/"; "*" -> "" (every event). A
                        # prefix not ending at a "/" ("app/x*") is rare and
                        # checked one by one.
                        head = trigger.event[:-1]
                        if head == "" or head.endswith("/"):
                            prefix.setdefault(head, []).append(entry)
                        else:
                            loose.append((head, entry))
                    else:
                        exact.setdefault(trigger.event, []).append(entry)
        self._exact = exact
        self._prefix = prefix
        self._loose = loose
        self._functions = infos
        self._crons = crons


def _info(target: Target, fn: FunctionConfig, held: HeldRule | None) -> FunctionInfo:
    cancel: list[CancelOn] = []
    for item in fn.cancel or ():
        if not item.event:
            log.warning("function %s: cancel condition %r ignored (needs an event name)", fn.id, item)
            continue
        if item.if_ is not None:
            try:
                Expression(item.if_)
            except ValueError as exc:
                log.warning("function %s: cancel condition on %r ignored: %s", fn.id, item.event, exc)
                continue
        cancel.append(CancelOn(item.event, item.if_ or None, _duration_ms(fn.id, "cancel timeout", item.timeout)))
    timeouts = fn.timeouts or TimeoutsConfig()
    return FunctionInfo(
        target=target,
        cancel=tuple(cancel),
        start_timeout_ms=_duration_ms(fn.id, "timeouts.start", timeouts.start),
        finish_timeout_ms=_duration_ms(fn.id, "timeouts.finish", timeouts.finish),
        start_limits=parse_start_limits(fn),
        held=held,
        limits=function_limits(fn),
    )


def _duration_ms(fn_id: str, what: str, value: Any) -> int | None:
    if value is None:
        return None
    seconds = parse_duration(value) if isinstance(value, str) else None
    if seconds is None:
        log.warning('function %s: %s %r is not a duration such as "30s"; ignored', fn_id, what, value)
        return None
    return int(seconds * 1000)
