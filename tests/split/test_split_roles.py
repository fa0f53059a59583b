"""Split roles on one PostgreSQL, as real processes: 1 API, 2 gateways, 2 executors,
6 workers of our SDK and 1 official `inngest` worker (issue 23, "Done when" 1-6).

One platform serves the whole module; the tests run in file order and each leaves
it as it found it (1 API, 2 gateways, 2 executors, every worker connected), so a
test that kills or stops a process starts one in its place. Each test counts only
the runs of the events it sent. What ran is counted on the workers' side
(`tests.split.app` writes a line when a step body begins and when it ends).
"""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import complete_lines
from tests.postgres import PostgresServer
from tests.split.harness import (
    DRAIN_TIMEOUT,
    OWNER_LEASE,
    PROCESS_TTL,
    Cluster,
    Feeder,
    RoleProcess,
    assert_all_completed,
    clock_text,
    poll_until,
)

SDK_WORKERS = [f"w{i}" for i in range(1, 7)]
#: The official worker's instance id (tests/compat/official_worker.py).
OFFICIAL = "official-worker"
#: Seconds past the ownership lease within which a dead executor's runs must have moved.
CLAIM_MARGIN = 5.0
#: Seconds before a gateway's SIGKILL within which a step that ended may still have had
#: its reply on the way through that gateway (so running it again is allowed).
REPLY_IN_FLIGHT = 2.0


@pytest.fixture(scope="module")
def cluster(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("split"), postgres_server.create_database())
    try:
        try:
            c.start_platform(gateways=2, executors=2)
            for name in SDK_WORKERS:
                c.start_worker(name)
            c.start_official()
            c.wait_connected([*SDK_WORKERS, OFFICIAL])
        except BaseException as exc:
            raise AssertionError(f"the split platform did not come up: {exc}\n{c.logs()}") from exc
        yield c
    finally:
        c.stop()


def _gateway(cluster: Cluster, base: str) -> RoleProcess:
    return next(g for g in cluster.gateways if g.base == base)


def _run_ids(runs: list[dict[str, object]]) -> set[str]:
    return {str(r["run_id"]) for r in runs}


def _assert_nothing_ran_twice(cluster: Cluster, run_ids: set[str]) -> None:
    twice = cluster.steps.ran_twice(run_ids)
    assert twice == {}, f"{len(twice)} steps ran more than once (UTC):\n{cluster.steps.describe(twice)}"
    assert cluster.steps.finished_count(run_ids) == 5 * len(run_ids)


def _every_worker_on(cluster: Cluster, gateway_ids: set[str]) -> None:
    """Until every worker has connections, all of them on `gateway_ids` (a gone gateway's
    entries leave the registry when it stops, or at most PROCESS_TTL after it died)."""
    instances = [*SDK_WORKERS, OFFICIAL]

    def settled() -> bool:
        on = cluster.probe.gateways_of(instances)
        return all(gws and gws <= gateway_ids for gws in on.values())

    try:
        poll_until(settled, PROCESS_TTL + 60, f"every worker to be connected only to {sorted(gateway_ids)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {cluster.probe.gateways_of(instances)}") from None


def test_1000_runs_of_five_steps_complete_and_no_step_runs_twice(cluster: Cluster) -> None:
    gateway_ids = {g.process_id for g in cluster.gateways}
    on = cluster.probe.gateways_of(SDK_WORKERS)
    assert set().union(*on.values()) == gateway_ids, f"the workers are not spread over both gateways: {on}"

    ids = cluster.send_five(1000)
    official = cluster.send([{"name": "compat/two", "data": {"x": i}} for i in range(20)])
    cluster.wait_finished([*ids, *official], timeout=240)

    runs = assert_all_completed(cluster, ids)
    assert {r["output"] for r in runs} == {10}
    _assert_nothing_ran_twice(cluster, _run_ids(runs))
    # Both gateways carried steps: each worker is on one of them.
    by_worker = collections.Counter(s.worker for s in cluster.steps.finished() if s.run_id in _run_ids(runs))
    carried = {gw for worker in by_worker for gw in on.get(worker, set())}
    assert carried == gateway_ids, f"steps by worker: {dict(by_worker)}; workers' gateways: {on}"

    official_runs = assert_all_completed(cluster, official)
    assert [r["output"] for r in official_runs] == [
        {"first": {"x": i + 1}, "second": (i + 1) * 10, "via": "official-sdk"} for i in range(20)
    ]


def test_instance_limit_holds_across_both_gateways(cluster: Cluster) -> None:
    """Two processes of one instance id with max_worker_concurrency=2, one on each
    gateway (pinned with CONNECT_GATEWAY_URL): never more than 2 bodies at once,
    counted across both processes."""
    a, b = cluster.gateways
    counter = cluster.dir / "limited.counter"
    names = {"limited-a": a, "limited-b": b}
    for name, gw in names.items():
        cluster.start_worker(
            name,
            target="tests.split.app:limited_client",
            instance_id="limited",
            max_concurrency=2,
            env={"CONNECT_GATEWAY_URL": gw.gateway_url, "SPLIT_COUNTER": str(counter)},
        )
    try:
        both = {a.process_id, b.process_id}
        poll_until(lambda: cluster.probe.gateways_of(["limited"])["limited"] == both, 60, "limited on both gateways")
        ids = cluster.send([{"name": "split/limited", "data": {"delay": 0.25}} for _ in range(40)])
        cluster.wait_finished(ids, timeout=120)
        runs = assert_all_completed(cluster, ids)
        assert {r["output"] for r in runs} == {"ok"}

        peaks = [int(line) for line in complete_lines(Path(f"{counter}.peaks"))]
        assert len(peaks) >= 40
        assert max(peaks) <= 2, f"up to {max(peaks)} bodies ran at once: {collections.Counter(peaks)}"
        assert max(peaks) == 2, "the load never reached the limit, so it proves nothing"
        # Which gateway forwards each request is the platform's choice (one may win every
        # race for the freed slot); the instance stayed on both all along.
        assert cluster.probe.gateways_of(["limited"])["limited"] == both
    finally:
        for name in names:
            cluster.stop_worker(name)


def test_sigterm_to_a_gateway_mid_load_loses_nothing_and_runs_nothing_again(cluster: Cluster) -> None:
    a = _gateway(cluster, "gwa")
    with Feeder(cluster) as feed:
        cluster.wait_steps(lambda: feed.ids, 300)
        a.signal(signal.SIGTERM)
        saw_503 = poll_until(lambda: a.ready_status() in (503, None), 5, "/ready of the draining gateway to turn 503")
        code = a.wait(DRAIN_TIMEOUT + 30)
        assert code == 0, f"the gateway exited with {code}"
        cluster.retire(a)
        a2 = cluster.start_gateway("gwa")
        cluster.wait_steps(lambda: feed.ids, cluster.finished_steps(feed.ids) + 200)
    cluster.wait_finished(feed.ids, timeout=180)
    runs = assert_all_completed(cluster, feed.ids)
    _assert_nothing_ran_twice(cluster, _run_ids(runs))
    assert saw_503 < 5
    _every_worker_on(cluster, {_gateway(cluster, "gwb").process_id, a2.process_id})


def test_sigkill_of_a_gateway_mid_load_runs_again_only_its_steps_in_flight(cluster: Cluster) -> None:
    b = _gateway(cluster, "gwb")
    with Feeder(cluster, delay=0.2) as feed:
        cluster.wait_steps(lambda: feed.ids, 300)
        on_b = {i for i, gws in cluster.probe.gateways_of(SDK_WORKERS).items() if b.process_id in gws}
        assert on_b, "no worker was on the gateway about to be killed"
        killed_at = time.time()
        b.kill()
        cluster.retire(b)
        cluster.start_gateway("gwb")
        cluster.wait_steps(lambda: feed.ids, cluster.finished_steps(feed.ids) + 300)
    cluster.wait_finished(feed.ids, timeout=180)
    runs = assert_all_completed(cluster, feed.ids)
    run_ids = _run_ids(runs)

    first_start: dict[tuple[str, str], tuple[float, str]] = {}
    for s in sorted(cluster.steps.started(), key=lambda s: s.at):
        first_start.setdefault((s.run_id, s.step), (s.at, s.worker))
    first_end: dict[tuple[str, str], float] = {}
    for s in sorted(cluster.steps.finished(), key=lambda s: s.at):
        first_end.setdefault((s.run_id, s.step), s.at)

    def was_in_flight_on_b(key: tuple[str, str]) -> bool:
        """Began on a worker connected to B before the kill, and had not ended (so its reply
        had not been stored) more than REPLY_IN_FLIGHT before it."""
        at, worker = first_start[key]
        ended = first_end.get(key, float("inf"))
        return worker in on_b and at < killed_at and ended > killed_at - REPLY_IN_FLIGHT

    twice = cluster.steps.ran_twice(run_ids)
    in_flight = [k for k in first_start if k[0] in run_ids and was_in_flight_on_b(k)]
    not_allowed = {k: n for k, n in twice.items() if not was_in_flight_on_b(k)}
    assert not_allowed == {}, (
        f"steps not in flight on the killed gateway ({clock_text(killed_at)}) ran again (UTC):\n"
        f"{cluster.steps.describe(not_allowed)}\n{len(twice)} ran again, {len(in_flight)} were in flight there"
    )
    assert all(n == 2 for n in twice.values()), f"steps ran more than twice: {twice}"


def test_sigkill_of_an_executor_moves_its_runs_within_one_ownership_lease(cluster: Cluster) -> None:
    """The executor killed is the one driving the most runs at that moment (new runs are
    claimed in batches, so at a given instant one executor may drive none of them)."""
    with Feeder(cluster, delay=0.1) as feed:
        cluster.wait_steps(lambda: feed.ids, 300)
        driven: dict[str, list[str]] = {}

        def some_driven() -> bool:
            driven.update(
                {e.process_id: cluster.probe.running_owned_by(e.process_id, feed.ids) for e in cluster.executors}
            )
            return max(len(runs) for runs in driven.values()) >= 5

        poll_until(some_driven, 60, "an executor to drive 5 runs at once")
        victim, survivor = sorted(cluster.executors, key=lambda e: len(driven[e.process_id]), reverse=True)
        owned = driven[victim.process_id]
        victim.kill()
        cluster.retire(victim)
        took = poll_until(
            lambda: not cluster.probe.running_owned_by(victim.process_id, feed.ids),
            OWNER_LEASE + CLAIM_MARGIN,
            f"the killed executor's runs to move within its {OWNER_LEASE}s lease (+{CLAIM_MARGIN}s)",
        )
        rows = cluster.probe.sql("SELECT owner, status FROM runs WHERE run_id = ANY($1::text[])", owned)
        owners = {r["owner"] for r in rows if r["status"] == "Running"}
        assert owners <= {survivor.process_id}, f"running runs of the killed executor are owned by {owners}"
        cluster.wait_steps(lambda: feed.ids, cluster.finished_steps(feed.ids) + 200)
    cluster.wait_finished(feed.ids, timeout=180)
    runs = assert_all_completed(cluster, feed.ids)
    _assert_nothing_ran_twice(cluster, _run_ids(runs))
    assert took <= OWNER_LEASE + CLAIM_MARGIN
    cluster.start_executor(victim.base)  # back to two executors, under a new id


def test_rolling_restart_of_every_process_under_load_loses_nothing(cluster: Cluster) -> None:
    assert cluster.api is not None
    order = [cluster.api, *cluster.gateways, *cluster.executors]
    with Feeder(cluster) as feed:
        for old in order:
            cluster.wait_steps(lambda: feed.ids, cluster.finished_steps(feed.ids) + 150)
            cluster.replace(old)
        cluster.wait_steps(lambda: feed.ids, cluster.finished_steps(feed.ids) + 150)
    cluster.wait_finished(feed.ids, timeout=180)
    runs = assert_all_completed(cluster, feed.ids)
    _assert_nothing_ran_twice(cluster, _run_ids(runs))
    assert not {p.process_id for p in order} & {p.process_id for p in [*cluster.gateways, *cluster.executors]}
    _every_worker_on(cluster, {g.process_id for g in cluster.gateways})
