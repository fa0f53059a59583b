"""ULIDs for connections, requests and leases.

A lease id is a ULID whose timestamp part is the lease's expiry time, so
whether a lease is live can be read off the id itself.
"""

from __future__ import annotations

import base64
import binascii
import random

from ulid import ULID

_RANDOM_SPACE = 1 << 80


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


def seeded_event_ids(seed: str, count: int) -> list[str]:
    """The ids of a batch of `count` events sent with `x-inngest-event-id-seed`.

    The seed is `<unix ms>,<base64 of 10 random bytes>`, drawn once per send
    and repeated by the sender's own retries of that request. Event `i` gets
    the ULID with the seed's time and the seed's randomness plus `i`, so a
    retried request names the same events and they are stored once. Raises
    ValueError, saying what is wrong, for a malformed seed.
    """
    millis_text, sep, random_text = seed.strip().partition(",")
    if not sep or not millis_text.isdigit():
        raise ValueError("x-inngest-event-id-seed must be '<unix ms>,<base64 of 10 random bytes>'")
    millis = int(millis_text)
    if millis >= 1 << 48:
        raise ValueError(f"x-inngest-event-id-seed time {millis} is out of range")
    try:
        randomness = base64.b64decode(random_text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("x-inngest-event-id-seed randomness is not base64") from None
    if len(randomness) != 10:
        raise ValueError(f"x-inngest-event-id-seed randomness is {len(randomness)} bytes; it must be 10")
    first = int.from_bytes(randomness, "big")
    stamp = millis.to_bytes(6, "big")
    return [str(ULID.from_bytes(stamp + ((first + i) % _RANDOM_SPACE).to_bytes(10, "big"))) for i in range(count)]
