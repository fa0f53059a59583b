"""The handshake budget: how many connections may be unauthenticated at once.

A connection counts from the moment its TCP connection is accepted until its
WORKER_CONNECT is authenticated (or it closes): the WebSocket upgrade, the
wait for WORKER_CONNECT and the token check all happen inside the budget.
Authenticated worker connections count against `--max-connections` instead,
so sockets that never authenticate can fill only this budget and can never
keep a real worker out of `--max-connections`.

Two bounds, both checked at accept time (before a byte is read, so a refusal
costs nothing but the accept):

- `max_handshakes` for the whole gateway, and
- `max_per_peer` for one peer address, so one address cannot take the whole
  budget. Workers behind one NAT share an address: the bound is per address,
  generous enough for a node's worth of pods reconnecting at once, and a
  worker refused here retries with backoff.

Past either bound the TCP connection is dropped at once. Pure bookkeeping:
no I/O, time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Connections in the handshake at once, gateway-wide (`--max-handshakes`).
MAX_HANDSHAKES = 1024
#: Connections in the handshake at once from one peer address (`--max-handshakes-per-peer`).
MAX_HANDSHAKES_PER_PEER = 256
#: Seconds between two log lines about refused connections.
REPORT_INTERVAL = 10.0


@dataclass
class HandshakeAdmission:
    max_handshakes: int = MAX_HANDSHAKES
    max_per_peer: int = MAX_HANDSHAKES_PER_PEER
    #: Connections refused since the last report.
    refused: int = 0
    _total: int = 0
    _per_peer: dict[str, int] = field(default_factory=dict)
    _last_report: float = float("-inf")

    def __post_init__(self) -> None:
        if self.max_handshakes < 1 or self.max_per_peer < 1:
            raise ValueError("handshake budgets must be at least 1")

    @property
    def in_handshake(self) -> int:
        return self._total

    def peer_in_handshake(self, peer: str) -> int:
        return self._per_peer.get(peer, 0)

    def enter(self, peer: str) -> str | None:
        """Take a place for a new connection from `peer`; the reason it is
        refused, or None when it got one (then `leave` must follow, once)."""
        if self._total >= self.max_handshakes:
            self.refused += 1
            return f"{self._total} connections in the handshake (limit {self.max_handshakes})"
        held = self._per_peer.get(peer, 0)
        if held >= self.max_per_peer:
            self.refused += 1
            return f"{held} connections in the handshake from {peer} (limit {self.max_per_peer})"
        self._total += 1
        self._per_peer[peer] = held + 1
        return None

    def leave(self, peer: str) -> None:
        """The connection authenticated or closed: free its place."""
        held = self._per_peer.get(peer, 0)
        if held <= 0:
            return
        self._total -= 1
        if held == 1:
            del self._per_peer[peer]  # so the table holds only peers in the handshake
        else:
            self._per_peer[peer] = held - 1

    def report_due(self, now: float) -> bool:
        """Whether to log the refusals now: at most once per REPORT_INTERVAL,
        so a flood of refused connections cannot flood the log."""
        if self.refused == 0 or now - self._last_report < REPORT_INTERVAL:
            return False
        self._last_report = now
        return True

    def take_refused(self) -> int:
        refused, self.refused = self.refused, 0
        return refused
