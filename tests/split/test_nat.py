"""Workers behind a NAT, for real (issue 23, "Done when" 7): our SDK's workers and the
official `inngest` worker run in a network namespace of their own behind a masquerading
router (see `tests.split.nat`); the platform (1 API, 2 gateways, 2 executors, each its own
process) cannot reach them. They dial out and the load holds; cutting their link for
30 s mid-load loses nothing and runs no finished step again.

Needs root and network namespaces: without them every test here is skipped with a
message naming what is missing.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.postgres import PostgresServer
from tests.split import nat
from tests.split.harness import Cluster, Feeder, assert_all_completed, clock_text, poll_until

NAT_WORKERS = [f"n{i}" for i in range(1, 5)]
OFFICIAL = "official-worker"
#: How long the fleet's link stays down, in seconds (the issue's figure).
CUT_SECONDS = 30.0
#: Step request leases that outlast the cut, as the default (120 s) does: a step that
#: ends while its worker is cut off keeps its lease until the reply gets through.
NAT_LEASES = ("--lease-duration", "60", "--extend-lease-interval", "5")


@pytest.fixture(scope="module")
def fleet() -> Iterator[nat.Nat]:
    lacking = nat.missing()
    if lacking:
        pytest.skip(f"NAT TESTS NOT RUN (issue 23, 'Done when' 7): {lacking}")
    n = nat.Nat()
    try:
        n.setup()
        yield n
    finally:
        n.teardown()


@pytest.fixture(scope="module")
def cluster(
    fleet: nat.Nat, postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    c = Cluster(
        tmp_path_factory.mktemp("split-nat"),
        postgres_server.create_database(),
        host=nat.HOST_ADDR,
        lease_flags=NAT_LEASES,
    )
    try:
        try:
            c.start_platform(gateways=2, executors=2)
            for name in NAT_WORKERS:
                c.start_worker(name, prefix=fleet.prefix)
            c.start_official(prefix=fleet.prefix)
            c.wait_connected([*NAT_WORKERS, OFFICIAL])
        except BaseException as exc:
            raise AssertionError(f"the split platform or its NATed workers did not come up: {exc}\n{c.logs()}") from exc
        yield c
    finally:
        c.stop()


def _gateway_peers(cluster: Cluster) -> set[str]:
    """The addresses of the TCP peers of every gateway's established connections."""
    peers = set()
    for gw in cluster.gateways:
        out = subprocess.run(
            ["ss", "-Htn", "state", "established", f"( sport = :{gw.gateway_port} )"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for line in out.splitlines():
            peer = line.split()[-1]
            peers.add(peer.rsplit(":", 1)[0])
    return peers


def test_workers_behind_a_nat_dial_out_and_carry_the_load(fleet: nat.Nat, cluster: Cluster) -> None:
    assert not fleet.host_routes_to_fleet(), "the host has a route to the fleet: it is not behind a NAT"
    assert _gateway_peers(cluster) == {nat.ROUTER_UP}, "every worker connection should come through the NAT"

    ids = cluster.send_five(300)
    official = cluster.send([{"name": "compat/two", "data": {"x": i}} for i in range(10)])
    cluster.wait_finished([*ids, *official], timeout=180)
    runs = assert_all_completed(cluster, ids)
    run_ids = {r["run_id"] for r in runs}
    assert cluster.steps.ran_twice(run_ids) == {}
    assert cluster.steps.finished_count(run_ids) == 1500
    assert [r["output"]["second"] for r in assert_all_completed(cluster, official)] == [(i + 1) * 10 for i in range(10)]


def test_cutting_the_fleets_link_for_30s_loses_nothing_and_runs_nothing_again(fleet: nat.Nat, cluster: Cluster) -> None:
    with Feeder(cluster, delay=0.1) as feed:
        cluster.wait_steps(lambda: feed.ids, 200)
        cut_at = time.time()
        fleet.cut()
        try:
            # The cut itself lasts the 30 s; events keep arriving meanwhile.
            time.sleep(CUT_SECONDS)
        finally:
            fleet.restore()
            restored_at = time.time()
        cluster.wait_connected([*NAT_WORKERS, OFFICIAL], timeout=120)
        cluster.wait_steps(lambda: feed.ids, cluster.finished_steps(feed.ids) + 300)
    cluster.wait_finished(feed.ids, timeout=240)
    runs = assert_all_completed(cluster, feed.ids)
    run_ids = {r["run_id"] for r in runs}
    twice = cluster.steps.ran_twice(run_ids)
    assert twice == {}, (
        f"{len(twice)} steps ran again; link down {clock_text(cut_at)} to {clock_text(restored_at)} (UTC):\n"
        f"{cluster.steps.describe(twice)}"
    )
    assert cluster.steps.finished_count(run_ids) == 5 * len(run_ids)
    poll_until(lambda: _gateway_peers(cluster) == {nat.ROUTER_UP}, 30, "connections only through the NAT")
