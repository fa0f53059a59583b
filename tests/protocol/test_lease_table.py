"""`LeaseTable.shorten`: what a closed connection does to its instance's leases (injected time)."""

from __future__ import annotations

from protocol.leases import LeaseTable

T0 = 1_000.0


def test_shorten_cuts_only_that_instances_longer_leases() -> None:
    table = LeaseTable(duration=120)
    mine = table.grant("r1", "inst", T0)
    other = table.grant("r2", "other", T0)
    soon = table.grant("r3", "inst", T0)
    soon.expires_at = T0 + 10  # already lapses before the cut-off
    shortened = table.shorten("inst", T0 + 30)
    assert shortened == [mine]
    assert (mine.expires_at, other.expires_at, soon.expires_at) == (T0 + 30, T0 + 120, T0 + 10)


def test_a_shortened_lease_lapses_at_the_cut_off_with_no_grace() -> None:
    table = LeaseTable(duration=120)
    lease = table.grant("r", "inst", T0)
    presented = lease.lease_id
    table.shorten("inst", T0 + 30)
    assert lease.active(T0 + 29.999)
    assert not lease.active(T0 + 30)
    assert table.extend("r", presented, "inst", T0 + 30.001) is None  # too late: it runs elsewhere


def test_an_extension_before_the_cut_off_restores_the_full_lease() -> None:
    table = LeaseTable(duration=120)
    lease = table.grant("r", "inst", T0)
    table.shorten("inst", T0 + 30)
    extended = table.extend("r", lease.lease_id, "inst", T0 + 29)
    assert extended is not None and extended.expires_at == T0 + 29 + 120
