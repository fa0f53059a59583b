"""Which ready connection gets the next request for a function.

Only READY connections are indexed (paused and draining ones are removed at
once). A candidate is eligible when its instance has free capacity; among
eligible candidates the choice is uniformly random, which spreads load
without any shared counter.
"""

from __future__ import annotations

import random

from connect.gateway.capacity import InstanceCapacity
from connect.gateway.connection import Connection
from connect.gateway.dispatch import AtCapacity, NoWorker


class Router:
    def __init__(self, capacity: InstanceCapacity) -> None:
        self._capacity = capacity
        self._by_function: dict[tuple[str, str], list[Connection]] = {}
        self._by_instance: dict[str, set[Connection]] = {}

    def add(self, conn: Connection) -> None:
        self._by_instance.setdefault(conn.instance_id, set()).add(conn)
        for key in conn.functions:
            bucket = self._by_function.setdefault(key, [])
            if conn not in bucket:
                bucket.append(conn)

    def remove(self, conn: Connection) -> None:
        conns = self._by_instance.get(conn.instance_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._by_instance[conn.instance_id]
        for key in conn.functions:
            bucket = self._by_function.get(key)
            if bucket and conn in bucket:
                bucket.remove(conn)
                if not bucket:
                    del self._by_function[key]

    def functions_of(self, instance_id: str) -> set[tuple[str, str]]:
        """The functions the instance's ready connections serve."""
        return {key for conn in self._by_instance.get(instance_id, ()) for key in conn.functions}

    def has_candidate(self, app_name: str, function_slug: str) -> bool:
        return any(self._capacity.has_room(c.instance_id) for c in self._by_function.get((app_name, function_slug), ()))

    def pick(self, app_name: str, function_slug: str) -> Connection:
        candidates = self._by_function.get((app_name, function_slug))
        if not candidates:
            raise NoWorker(f"no ready worker serves {function_slug} of app {app_name}")
        eligible = [c for c in candidates if self._capacity.has_room(c.instance_id)]
        if not eligible:
            raise AtCapacity(f"all workers serving {function_slug} are at capacity")
        return eligible[0] if len(eligible) == 1 else random.choice(eligible)
