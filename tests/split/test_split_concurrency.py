"""Concurrency limits with split roles on one PostgreSQL: 1 API, 1 gateway,
2 executors (each drives its share of the runs, so both take slots of the
same keys) and two workers of our SDK. Bodies are counted on the workers'
side across both processes (`tests.e2e.conc_counter`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e import conc_counter
from tests.postgres import PostgresServer
from tests.split.harness import Cluster, assert_all_completed

WORKERS = ["c1", "c2"]


@pytest.fixture(scope="module")
def cluster(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("split-conc"), postgres_server.create_database())
    try:
        try:
            c.start_platform(gateways=1, executors=2)
            for name in WORKERS:
                c.start_worker(name, target="tests.e2e.concurrency_app:client", env={"CONC_DIR": str(c.dir)})
            c.wait_connected(WORKERS)
        except BaseException as exc:
            raise AssertionError(f"the split platform did not come up: {exc}\n{c.logs()}") from exc
        yield c
    finally:
        c.stop()


def test_two_executors_never_exceed_a_key_s_limit(cluster: Cluster) -> None:
    events = [{"name": "conc/key", "data": {"key": f"s{i % 20}", "seconds": 0.1}} for i in range(300)]
    ids = cluster.send(events)
    cluster.wait_finished(ids, timeout=240)
    assert_all_completed(cluster, ids)
    peaks = {k: v for k, v in conc_counter.peaks(cluster.dir).items() if k.startswith("key-s")}
    assert len(peaks) == 20
    assert max(peaks.values()) == 2, peaks
    # Both executors drove runs (so both took slots).
    owners = cluster.probe.sql("SELECT count(DISTINCT owner) FROM runs WHERE owner IS NOT NULL")
    assert owners[0][0] == 2, owners
