"""`Router`: ready connections by function, picked uniformly among those with room."""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass, field

import pytest

from connect.dispatch import AtCapacity, NoWorker
from connect.gateway.capacity import InstanceCapacity
from connect.gateway.routing import PICK_DRAWS, Router

FN = ("app", "app-fn")
OTHER = ("app", "app-other")


@dataclass(eq=False)
class Ready:
    """A ready connection as the router sees one: its instance and its functions."""

    instance_id: str
    functions: set[tuple[str, str]] = field(default_factory=lambda: {FN})


def fill(capacity: InstanceCapacity, instance_id: str) -> None:
    capacity.set_limit(instance_id, 1)
    assert capacity.assign(instance_id, f"busy-{instance_id}")


def test_many_connections_come_and_go_and_only_ready_ones_are_picked() -> None:
    router: Router[Ready] = Router(InstanceCapacity())
    conns = [Ready(f"i{n}", {FN, OTHER} if n % 2 else {FN}) for n in range(10_000)]
    for conn in conns:
        router.add(conn)
        router.add(conn)  # a second add changes nothing
    rng = random.Random(7)
    gone = set(rng.sample(conns, 9_990))
    for conn in gone:
        router.remove(conn)
        router.remove(conn)  # nor does a second remove
    left = [c for c in conns if c not in gone]
    assert {router.pick(*FN) for _ in range(2_000)} == set(left)
    assert {router.pick(*OTHER) for _ in range(2_000)} == {c for c in left if OTHER in c.functions}
    assert router.functions_of(left[0].instance_id) == left[0].functions
    for conn in left:
        router.remove(conn)
    with pytest.raises(NoWorker):
        router.pick(*FN)
    assert not router.has_candidate(*FN) and router.functions_of(left[0].instance_id) == set()


def test_the_pick_is_uniform_among_the_connections_with_room() -> None:
    capacity = InstanceCapacity()
    router: Router[Ready] = Router(capacity)
    conns = [Ready(f"i{n}") for n in range(6)]
    for conn in conns:
        router.add(conn)
    fill(capacity, "i1")
    fill(capacity, "i4")
    picks = collections.Counter(router.pick(*FN).instance_id for _ in range(8_000))
    assert set(picks) == {"i0", "i2", "i3", "i5"}
    assert min(picks.values()) > 1_500  # each about 2,000: a quarter of the picks


def test_a_single_connection_with_room_among_full_ones_is_found() -> None:
    capacity = InstanceCapacity()
    router: Router[Ready] = Router(capacity)
    for n in range(200):
        router.add(Ready(f"i{n}"))
        if n != 137:
            fill(capacity, f"i{n}")
    # Random draws almost always land on full ones: the scan behind them finds it.
    assert PICK_DRAWS < 200
    assert {router.pick(*FN).instance_id for _ in range(50)} == {"i137"}
    assert router.has_candidate(*FN)

    fill(capacity, "i137")
    with pytest.raises(AtCapacity):
        router.pick(*FN)
    assert not router.has_candidate(*FN)


def test_connections_of_one_instance_share_its_capacity() -> None:
    capacity = InstanceCapacity()
    router: Router[Ready] = Router(capacity)
    a, b = Ready("shared"), Ready("shared")
    router.add(a)
    router.add(b)
    assert {router.pick(*FN) for _ in range(200)} == {a, b}
    fill(capacity, "shared")
    with pytest.raises(AtCapacity):
        router.pick(*FN)
    router.remove(a)
    assert router.functions_of("shared") == {FN}  # b still serves it


def test_an_instance_found_full_elsewhere_has_no_room_here_until_cleared() -> None:
    capacity = InstanceCapacity()
    router: Router[Ready] = Router(capacity)
    limited, unlimited = Ready("limited"), Ready("unlimited", {OTHER})
    router.add(limited)
    router.add(unlimited)
    capacity.set_limit("limited", 2)
    capacity.mark_full("limited")  # its other gateway's requests fill it
    with pytest.raises(AtCapacity):
        router.pick(*FN)
    assert router.with_room() == [OTHER]
    capacity.mark_full("unlimited")  # an instance without a limit is never full
    assert router.pick(*OTHER) is unlimited
    assert capacity.clear_full("limited") and not capacity.clear_full("limited")
    assert router.pick(*FN) is limited
    capacity.mark_full("limited")
    assert capacity.clear_full() and capacity.has_room("limited")
    assert sorted(c.instance_id for c in router.ready_connections()) == ["limited", "unlimited"]
