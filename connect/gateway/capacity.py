"""Per-instance capacity (`max_worker_concurrency`).

Capacity belongs to the instance id, not the connection: a worker that
reconnects mid-step keeps its in-flight count, and every connection that
presents the same instance id shares one budget (last limit set wins; a
connection without a limit makes the instance unlimited).

With other gateways serving the same instances, the budget is also held in
the store (`connect.gateway.dispatcher`): an instance the store found full
is `mark_full` here, and has no room until `clear_full`.
"""

from __future__ import annotations


class InstanceCapacity:
    def __init__(self) -> None:
        self._limits: dict[str, int] = {}
        self._active: dict[str, set[str]] = {}
        self._owner: dict[str, str] = {}
        #: Instances whose limit other gateways' requests fill (see `mark_full`).
        self._full: set[str] = set()

    def set_limit(self, instance_id: str, limit: int | None) -> None:
        if limit is None or limit <= 0:
            self._limits.pop(instance_id, None)
        else:
            self._limits[instance_id] = limit

    def limit(self, instance_id: str) -> int | None:
        return self._limits.get(instance_id)

    def in_flight(self, instance_id: str) -> int:
        return len(self._active.get(instance_id, ()))

    def has_room(self, instance_id: str) -> bool:
        limit = self._limits.get(instance_id)
        return limit is None or (self.in_flight(instance_id) < limit and instance_id not in self._full)

    def mark_full(self, instance_id: str) -> None:
        """Requests through other gateways fill the instance: no room here until `clear_full`."""
        self._full.add(instance_id)

    def clear_full(self, instance_id: str | None = None) -> bool:
        """A lease of the instance (None: of any) may have ended; True if a mark was cleared."""
        if instance_id is None:
            cleared = bool(self._full)
            self._full.clear()
            return cleared
        if instance_id in self._full:
            self._full.discard(instance_id)
            return True
        return False

    def assign(self, instance_id: str, request_id: str) -> bool:
        """Take a slot; False when the instance is full."""
        if not self.has_room(instance_id):
            return False
        self._active.setdefault(instance_id, set()).add(request_id)
        self._owner[request_id] = instance_id
        return True

    def release(self, request_id: str) -> str | None:
        """Free the slot held by `request_id` (idempotent). Returns its instance."""
        instance_id = self._owner.pop(request_id, None)
        if instance_id is not None:
            active = self._active.get(instance_id)
            if active is not None:
                active.discard(request_id)
                if not active:
                    del self._active[instance_id]
        return instance_id
