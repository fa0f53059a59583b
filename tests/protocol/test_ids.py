"""ULIDs minted by `protocol.ids`, checked against the `ulid` package's own encoding."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st
from ulid import ULID

from protocol import ids
from tests.fuzz_settings import fuzz


@fuzz
@given(st.integers(0, (1 << 48) - 1), st.integers(0, (1 << 80) - 1))
def test_the_encoding_is_the_ulid_packages(millis: int, randomness: int) -> None:
    text = ids._format(millis, randomness)
    assert text == str(ULID.from_bytes(millis.to_bytes(6, "big") + randomness.to_bytes(10, "big")))
    parsed = ULID.from_str(text)
    assert parsed.milliseconds == millis and int.from_bytes(parsed.bytes[6:], "big") == randomness


def test_the_extremes() -> None:
    assert ids._format(0, 0) == "0" * 26
    assert ids._format((1 << 48) - 1, (1 << 80) - 1) == "7" + "Z" * 25


def test_new_ids_carry_the_time_and_differ() -> None:
    before = time.time_ns() // 1_000_000
    minted = [ids.new_ulid() for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    assert len(set(minted)) == 1000
    assert all(ids.is_ulid(m) and before <= ULID.from_str(m).milliseconds <= after for m in minted)


def test_a_lease_id_carries_its_expiry() -> None:
    lease = ids.lease_id(1_767_225_600.123)
    assert ids.is_ulid(lease)
    assert ids.lease_expiry(lease) == 1_767_225_600.123
