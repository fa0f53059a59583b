"""The handshake budget, driven directly."""

from __future__ import annotations

import pytest

from connect.gateway.admission import REPORT_INTERVAL, HandshakeAdmission


def test_a_peer_at_its_cap_is_refused_while_others_get_in() -> None:
    budget = HandshakeAdmission(max_handshakes=10, max_per_peer=3)
    assert [budget.enter("10.0.0.1") for _ in range(3)] == [None] * 3
    refusal = budget.enter("10.0.0.1")
    assert refusal is not None and "from 10.0.0.1 (limit 3)" in refusal
    assert budget.enter("10.0.0.2") is None
    assert budget.in_handshake == 4 and budget.peer_in_handshake("10.0.0.1") == 3


def test_the_gateway_wide_budget_bounds_all_peers() -> None:
    budget = HandshakeAdmission(max_handshakes=4, max_per_peer=2)
    for peer in ("a", "a", "b", "b"):
        assert budget.enter(peer) is None
    refusal = budget.enter("c")
    assert refusal is not None and "(limit 4)" in refusal
    budget.leave("a")
    assert budget.enter("c") is None  # a freed place is taken again


def test_leaving_frees_places_and_forgets_idle_peers() -> None:
    budget = HandshakeAdmission(max_handshakes=4, max_per_peer=2)
    budget.enter("a")
    budget.enter("a")
    budget.leave("a")
    budget.leave("a")
    budget.leave("a")  # one leave too many changes nothing
    assert budget.in_handshake == 0 and budget.peer_in_handshake("a") == 0
    assert budget._per_peer == {}
    assert budget.enter("a") is None and budget.enter("a") is None


def test_refusals_are_reported_at_most_once_per_interval() -> None:
    budget = HandshakeAdmission(max_handshakes=1, max_per_peer=1)
    assert not budget.report_due(0.0)  # nothing refused yet
    budget.enter("a")
    for _ in range(5):
        budget.enter("a")
    assert budget.report_due(100.0)
    assert budget.take_refused() == 5
    budget.enter("a")
    assert not budget.report_due(100.0 + REPORT_INTERVAL / 2)
    assert budget.report_due(100.0 + REPORT_INTERVAL)
    assert budget.take_refused() == 1


def test_budgets_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        HandshakeAdmission(max_handshakes=0)
    with pytest.raises(ValueError, match="at least 1"):
        HandshakeAdmission(max_per_peer=0)
