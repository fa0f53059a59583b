"""ULIDs for connections, requests and leases.

A lease id is a ULID whose timestamp part is the lease's expiry time, so
whether a lease is live can be read off the id itself.
"""

from __future__ import annotations

import random

from ulid import ULID


def new_ulid() -> str:
    return str(ULID())


def is_ulid(text: str) -> bool:
    try:
        ULID.from_str(text)
    except (ValueError, TypeError):
        return False
    return True


def lease_id(expires_at: float) -> str:
    """A fresh lease id expiring at `expires_at` (Unix seconds)."""
    ms = int(expires_at * 1000)
    # Uniqueness, not secrecy: lease ids are only ever presented by
    # authenticated workers, so a fast PRNG is enough (this runs per step).
    return str(ULID.from_bytes(ms.to_bytes(6, "big") + random.getrandbits(80).to_bytes(10, "big")))


def lease_expiry(lease: str) -> float:
    """The expiry time (Unix seconds) encoded in a lease id."""
    return ULID.from_str(lease).milliseconds / 1000.0
