"""Paused runs waiting for an event, indexed so an event finds them without a scan.

Three things wait on events: `step.wait_for_event` (resumed with the event),
`step.invoke` (resumed by the child's `inngest/function.finished`) and a
function's `cancel` conditions (the run is cancelled). Each is a `Watch`
filed under its event name. Within a name, a watch whose condition is
`async.<path> == <value>` (see `expressions.equality_of`) is filed under
`(<path>, <value>)`, so an incoming event costs one dictionary lookup per
distinct path rather than one CEL evaluation per paused run. Only watches
with another kind of condition are tried one by one (and evaluated once per
event).

The index lives in memory. It is rebuilt from the store when the executor
starts: every Running run re-files what it waits for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from connect.executor.expressions import (
    MISSING,
    Equality,
    compiled,
    equality_of,
    index_key,
    lookup,
    to_cel,
)
from connect.store.base import Waiting

# What a watch does when it matches.
RESUME: Final = "resume"  # store the event as the step's result
INVOKE: Final = "invoke"  # store the child's result (or error) as the step's result
CANCEL: Final = "cancel"  # cancel the run

WatchKey = tuple[str, str]  # (run id, step hash or cancel-condition id)


@dataclass(eq=False)
class Watch:
    """One run waiting for one kind of event."""

    run_id: str
    key: str  # the hashed step id; for a cancel condition, "cancel:<n>"
    action: str  # RESUME / INVOKE / CANCEL
    event_name: str
    trigger: dict[str, Any]  # the run's triggering event (what `event` means in CEL)
    expression: str | None = None
    expires_ms: int | None = None  # cancel conditions only; waits and invokes have timers
    #: Events received before this (Unix ms) never match it; checked for events
    #: read back from the store (those recorded here are newer than any watch).
    since_ms: int = 0
    #: The step it ends, as the run reported it (for the timeline); None for cancel conditions.
    step: Waiting | None = None
    # Filled in by the index.
    _equality: Equality | None = field(default=None, repr=False)
    _trigger_cel: Any = field(default=None, repr=False)
    _slot: tuple[Any, ...] = field(default=(), repr=False)

    @property
    def id(self) -> WatchKey:
        return (self.run_id, self.key)

    def accepts(self, candidate: dict[str, Any], candidate_cel: Any) -> bool:
        """Whether the full condition holds for `candidate` (already matched by name and key)."""
        if self.expression is None:
            return True
        if self._equality is not None and self._equality.whole:
            return True
        if self._trigger_cel is None:
            self._trigger_cel = to_cel(self.trigger)
        return compiled(self.expression).evaluate({"event": self._trigger_cel, "async": candidate_cel})


class _Bucket:
    """Every watch on one event name."""

    __slots__ = ("keyed", "scan")

    def __init__(self) -> None:
        self.keyed: dict[tuple[str, ...], dict[bytes, dict[WatchKey, Watch]]] = {}
        self.scan: dict[WatchKey, Watch] = {}

    def __bool__(self) -> bool:
        return bool(self.keyed or self.scan)


class WaitIndex:
    """Event name → watches, with exact-value sub-indexes (see the module docstring)."""

    def __init__(self) -> None:
        self._by_name: dict[str, _Bucket] = {}
        self._watches: dict[WatchKey, Watch] = {}
        self._by_run: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._watches)

    def __contains__(self, key: WatchKey) -> bool:
        return key in self._watches

    def add(self, watch: Watch) -> bool:
        """File `watch`; False (and nothing filed) if its condition is not valid CEL
        or can never hold. A watch already filed under the same id is replaced."""
        self.remove(*watch.id)
        if watch.expression is not None:
            try:
                compiled(watch.expression)
            except ValueError:
                return False
        equality = equality_of(watch.expression) if watch.expression is not None else None
        key: bytes | None = None
        if equality is not None:
            wanted = equality.wanted(watch.trigger)
            if wanted is MISSING:
                return False  # `event.<path>` is absent: CEL would error on every candidate
            key = index_key(wanted)
        bucket = self._by_name.setdefault(watch.event_name, _Bucket())
        slot: tuple[Any, ...]
        if equality is not None and key is not None:
            bucket.keyed.setdefault(equality.path, {}).setdefault(key, {})[watch.id] = watch
            slot = (watch.event_name, equality.path, key)
        else:
            equality = None  # a non-scalar value: CEL decides, one watch at a time
            bucket.scan[watch.id] = watch
            slot = (watch.event_name,)
        watch._equality = equality
        watch._slot = slot
        self._watches[watch.id] = watch
        self._by_run.setdefault(watch.run_id, set()).add(watch.key)
        return True

    def get(self, run_id: str, key: str) -> Watch | None:
        return self._watches.get((run_id, key))

    def remove(self, run_id: str, key: str) -> Watch | None:
        """Unfile one watch; returns it, or None if it was not filed."""
        watch = self._watches.pop((run_id, key), None)
        if watch is None:
            return None
        keys = self._by_run.get(run_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_run[run_id]
        bucket = self._by_name.get(watch.event_name)
        if bucket is not None:
            if len(watch._slot) == 3:
                _, path, value = watch._slot
                by_value = bucket.keyed.get(path)
                if by_value is not None:
                    group = by_value.get(value)
                    if group is not None:
                        group.pop(watch.id, None)
                        if not group:
                            del by_value[value]
                    if not by_value:
                        del bucket.keyed[path]
            else:
                bucket.scan.pop(watch.id, None)
            if not bucket:
                del self._by_name[watch.event_name]
        return watch

    def remove_run(self, run_id: str) -> list[Watch]:
        return [w for key in list(self._by_run.get(run_id, ())) if (w := self.remove(run_id, key)) is not None]

    def for_run(self, run_id: str) -> Iterator[Watch]:
        for key in self._by_run.get(run_id, ()):
            yield self._watches[(run_id, key)]

    def match(self, candidate: dict[str, Any], now_ms: int) -> list[Watch]:
        """The watches `candidate` (an event as a JSON object) satisfies. Nothing is
        removed: the caller decides which it claims."""
        bucket = self._by_name.get(candidate.get("name", ""))
        if bucket is None:
            return []
        found: list[Watch] = []
        candidate_cel: Any = None
        for path, by_value in bucket.keyed.items():
            value = lookup(candidate, path)
            if value is MISSING:
                continue
            key = index_key(value)
            if key is None:
                continue
            group = by_value.get(key)
            if not group:
                continue
            for watch in group.values():
                if watch.expires_ms is not None and now_ms > watch.expires_ms:
                    continue
                if not watch._equality or not watch._equality.whole:
                    if candidate_cel is None:
                        candidate_cel = to_cel(candidate)
                    if not watch.accepts(candidate, candidate_cel):
                        continue
                found.append(watch)
        for watch in bucket.scan.values():
            if watch.expires_ms is not None and now_ms > watch.expires_ms:
                continue
            if watch.expression is not None and candidate_cel is None:
                candidate_cel = to_cel(candidate)
            if watch.accepts(candidate, candidate_cel):
                found.append(watch)
        return found
