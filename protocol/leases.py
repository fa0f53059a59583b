"""Request leases, as the gateway keeps them (sans-I/O, injected time).

A lease says which worker instance currently runs a request and until when.
Workers extend it every `extend_lease_interval`; when it lapses the executor
treats the worker as gone and dispatches the same request again. Leases are
keyed by request id, not by connection, so a worker may extend over a
replacement connection after a gateway drain.

A lease lapses exactly at `expires_at`: there is no grace after it. An
extension presented later is refused, and a late reply needs none (a reply
for a request being dispatched again still answers it: first stored wins).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import ids, limits

#: How late after its due time a worker's next extension may arrive when one of
#: its connections has ended (see `LeaseTable.shorten`): the extension may be on
#: its way, or leave a little late from a busy worker.
EXTENSION_SLACK = 2.0


@dataclass
class Lease:
    request_id: str
    lease_id: str
    instance_id: str
    expires_at: float
    prev_lease_id: str = ""

    def active(self, now: float) -> bool:
        return self.expires_at > now


class LeaseTable:
    def __init__(self, duration: float = limits.LEASE_DURATION) -> None:
        self.duration = duration
        self._leases: dict[str, Lease] = {}

    def __len__(self) -> int:
        return len(self._leases)

    def get(self, request_id: str) -> Lease | None:
        return self._leases.get(request_id)

    def grant(self, request_id: str, instance_id: str, now: float) -> Lease:
        expires = now + self.duration
        lease = Lease(request_id, ids.lease_id(expires), instance_id, expires)
        self._leases[request_id] = lease
        return lease

    def restore(self, lease: Lease) -> None:
        self._leases[lease.request_id] = lease

    def extend(self, request_id: str, presented: str, instance_id: str, now: float) -> Lease | None:
        """Extend a live lease; None is a NACK.

        Presenting the current lease id rotates it. Presenting the previous
        id from the same instance returns the current lease unchanged: the
        worker lost our last ACK and is retrying (idempotent replay).
        """
        lease = self._leases.get(request_id)
        if lease is None or lease.instance_id != instance_id or not lease.active(now):
            return None
        if presented == lease.lease_id:
            expires = now + self.duration
            lease.prev_lease_id = lease.lease_id
            lease.lease_id = ids.lease_id(expires)
            lease.expires_at = expires
            return lease
        if presented == lease.prev_lease_id:
            return lease
        return None

    def owned_by(self, instance_id: str) -> list[Lease]:
        return [lease for lease in self._leases.values() if lease.instance_id == instance_id]

    def shorten(self, instance_id: str, now: float, interval: float, *, not_before: float = 0.0) -> list[Lease]:
        """Make every lease of `instance_id` lapse when its next extension is
        overdue: `interval` after it was granted or last extended (or `now`, if
        that is past, or `not_before`, if that is later), plus
        `EXTENSION_SLACK`; returns the leases this shortened.

        Used when a connection of that instance ends: a live worker extends
        its leases over another connection on its usual schedule, so it never
        loses one this way; a vanished one does not, and its requests are
        dispatched again then instead of when the whole lease runs out.
        `not_before` is for a connection the gateway dropped itself while the
        worker may still be there, cut off (see `connect.gateway.server`)."""
        shortened = []
        for lease in self._leases.values():
            if lease.instance_id != instance_id:
                continue
            until = max(now, not_before, lease.expires_at - self.duration + interval) + EXTENSION_SLACK
            if lease.expires_at > until:
                lease.expires_at = until
                shortened.append(lease)
        return shortened

    def release(self, request_id: str) -> Lease | None:
        return self._leases.pop(request_id, None)
