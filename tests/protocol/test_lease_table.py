"""`LeaseTable.shorten`: what a closed connection does to its instance's leases (injected time)."""

from __future__ import annotations

from protocol.leases import EXTENSION_SLACK, LeaseTable

T0 = 1_000.0


def test_shorten_cuts_only_that_instances_longer_leases() -> None:
    table = LeaseTable(duration=120)
    mine = table.grant("r1", "inst", T0)
    other = table.grant("r2", "other", T0)
    soon = table.grant("r3", "inst", T0 - 119)  # lapses at T0 + 1, before any cut-off
    shortened = table.shorten("inst", T0, interval=30)
    assert shortened == [mine]
    assert (mine.expires_at, other.expires_at, soon.expires_at) == (T0 + 30 + EXTENSION_SLACK, T0 + 120, T0 + 1)


def test_the_cut_off_is_when_the_next_extension_is_overdue() -> None:
    """Cut right after an extension, or just before the next: either way a
    worker extending on schedule (every 30 s) keeps its lease."""
    table = LeaseTable(duration=120)
    fresh = table.grant("r1", "inst", T0)
    late = table.grant("r2", "inst", T0 - 29.5)
    overdue = table.grant("r3", "inst", T0 - 40)
    table.shorten("inst", T0 + 0.001, interval=30)
    assert fresh.expires_at == T0 + 30 + EXTENSION_SLACK
    assert late.expires_at == T0 + 0.5 + EXTENSION_SLACK
    assert overdue.expires_at == T0 + 0.001 + EXTENSION_SLACK  # already due: only the slack is left


def test_a_shortened_lease_lapses_at_the_cut_off_with_no_grace() -> None:
    table = LeaseTable(duration=120)
    lease = table.grant("r", "inst", T0)
    presented = lease.lease_id
    table.shorten("inst", T0, interval=30)
    cutoff = T0 + 30 + EXTENSION_SLACK
    assert lease.active(cutoff - 0.001)
    assert not lease.active(cutoff)
    assert table.extend("r", presented, "inst", cutoff + 0.001) is None  # too late: it runs elsewhere


def test_an_extension_before_the_cut_off_restores_the_full_lease() -> None:
    table = LeaseTable(duration=120)
    lease = table.grant("r", "inst", T0)
    table.shorten("inst", T0, interval=30)
    extended = table.extend("r", lease.lease_id, "inst", T0 + 30.5)
    assert extended is not None and extended.expires_at == T0 + 30.5 + 120


def test_not_before_holds_the_cut_off_back_until_then() -> None:
    """A connection the gateway dropped while its worker may be cut off: no
    lease lapses before the gateway would have closed it as silent."""
    table = LeaseTable(duration=120)
    overdue = table.grant("r1", "inst", T0 - 40)
    fresh = table.grant("r2", "inst", T0)
    table.shorten("inst", T0, interval=30, not_before=T0 + 45)
    assert overdue.expires_at == T0 + 45 + EXTENSION_SLACK
    assert fresh.expires_at == T0 + 45 + EXTENSION_SLACK
    past_the_lease = table.grant("r3", "inst", T0)
    table.shorten("inst", T0, interval=30, not_before=T0 + 200)
    assert past_the_lease.expires_at == T0 + 120  # never lengthened
