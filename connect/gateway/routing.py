"""Which ready connection gets the next request for a function.

Only READY connections are indexed (paused and draining ones are removed at
once). A candidate is eligible when its instance has free capacity; among
eligible candidates the choice is uniformly random, which spreads load
without any shared counter.

Every operation is independent of how many connections serve a function,
as long as most of them have room: a reconnect herd adds 10,000 connections
for the same functions, and every dispatch picks among them. Adding and
removing are O(1) (`_Candidates`: a list for random access, an index for
removal by swapping with the last). A pick draws up to `PICK_DRAWS`
candidates at random and takes the first with room; only when all of those
draws are at capacity does it scan the rest, O(n). Drawing until a
candidate has room is a uniform choice among the eligible, as the scan is.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from connect.dispatch import AtCapacity, NoWorker
from connect.gateway.capacity import InstanceCapacity

#: Random draws a pick tries before it scans every candidate.
PICK_DRAWS = 8


class Routable(Protocol):
    """What the router needs of a connection (`connect.gateway.connection.Connection`)."""

    @property
    def instance_id(self) -> str: ...

    @property
    def functions(self) -> set[tuple[str, str]]: ...

    def __hash__(self) -> int: ...


C = TypeVar("C", bound=Routable)


class _Candidates(Generic[C]):
    """An insertion-ordered set with O(1) add, remove and random access."""

    def __init__(self) -> None:
        self._items: list[C] = []
        self._index: dict[C, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[C]:
        return iter(self._items)

    def add(self, item: C) -> None:
        if item not in self._index:
            self._index[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: C) -> None:
        pos = self._index.pop(item, None)
        if pos is None:
            return
        last = self._items.pop()
        if last is not item:
            self._items[pos] = last
            self._index[last] = pos

    def draw(self) -> C:
        return self._items[random.randrange(len(self._items))]


class Router(Generic[C]):
    def __init__(self, capacity: InstanceCapacity) -> None:
        self._capacity = capacity
        self._by_function: dict[tuple[str, str], _Candidates[C]] = {}
        self._by_instance: dict[str, set[C]] = {}

    def add(self, conn: C) -> None:
        self._by_instance.setdefault(conn.instance_id, set()).add(conn)
        for key in conn.functions:
            bucket = self._by_function.get(key)
            if bucket is None:
                bucket = self._by_function[key] = _Candidates()
            bucket.add(conn)

    def remove(self, conn: C) -> None:
        conns = self._by_instance.get(conn.instance_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._by_instance[conn.instance_id]
        for key in conn.functions:
            bucket = self._by_function.get(key)
            if bucket is not None:
                bucket.discard(conn)
                if not bucket:
                    del self._by_function[key]

    def ready_connections(self) -> list[C]:
        """Every ready (routable) connection."""
        return [conn for conns in self._by_instance.values() for conn in conns]

    def functions_of(self, instance_id: str) -> set[tuple[str, str]]:
        """The functions the instance's ready connections serve."""
        return {key for conn in self._by_instance.get(instance_id, ()) for key in conn.functions}

    def function_count(self) -> int:
        """How many (app, function slug) pairs ready connections serve."""
        return len(self._by_function)

    def with_room(self) -> list[tuple[str, str]]:
        """The (app, function slug) pairs some ready connection with room serves."""
        has_room = self._capacity.has_room
        return [key for key, bucket in self._by_function.items() if any(has_room(c.instance_id) for c in bucket)]

    def has_candidate(self, app_name: str, function_slug: str) -> bool:
        return any(self._capacity.has_room(c.instance_id) for c in self._by_function.get((app_name, function_slug), ()))

    def pick(self, app_name: str, function_slug: str) -> C:
        candidates = self._by_function.get((app_name, function_slug))
        if not candidates:
            raise NoWorker(f"no ready worker serves {function_slug} of app {app_name}")
        has_room = self._capacity.has_room
        for _ in range(PICK_DRAWS if len(candidates) > 1 else 1):
            conn = candidates.draw()
            if has_room(conn.instance_id):
                return conn
        eligible = [c for c in candidates if has_room(c.instance_id)]
        if not eligible:
            raise AtCapacity(f"all workers serving {function_slug} are at capacity")
        return random.choice(eligible)
