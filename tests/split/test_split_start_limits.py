"""Flow control at run start with split roles on one PostgreSQL: two API processes
record events at once, two executors run them, and an unmodified official worker
(`tests/compat/official_flow_app.py`) serves the functions. The gates are decided
in the store, so two API processes share one throttle and one rate limit."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.harness import Proc
from tests.postgres import PostgresServer
from tests.split.harness import ROOT, Cluster, RoleProcess

WORKER = "official-flow"


@pytest.fixture(scope="module")
def cluster(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """1 gateway, 2 executors and 2 API processes (the second one in `apis`)."""
    c = Cluster(tmp_path_factory.mktemp("split-flow"), postgres_server.create_database())
    try:
        try:
            c.start_platform(gateways=1, executors=2)
            second = RoleProcess(c, "api", "api2")
            APIS[:] = [c.url, second.url]
            second.start()
            if second.proc is not None:
                c.stopped.append(second.proc)  # stopped with the cluster
            args = [sys.executable, str(ROOT / "tests" / "compat" / "official_flow_app.py")]
            c.workers["flow"] = Proc(args, c.worker_env(WORKER), c.dir / "worker-flow.log")
            c.wait_connected([WORKER])
        except BaseException as exc:
            raise AssertionError(f"the split platform did not come up: {exc}\n{c.logs()}") from exc
        yield c
    finally:
        c.stop()


#: The URLs of the module's two API processes.
APIS: list[str] = []


def send_through_both(c: Cluster, name: str, datas: list[dict[str, Any]]) -> list[str]:
    """Each event in its own request, alternately to each API process, all at once."""
    urls = APIS

    def one(i: int) -> str:
        resp = httpx.post(f"{urls[i % 2]}/e/test", json=[{"name": name, "data": datas[i]}], timeout=30)
        resp.raise_for_status()
        [event_id] = resp.json()["ids"]
        return str(event_id)

    with ThreadPoolExecutor(len(datas)) as pool:
        return list(pool.map(one, range(len(datas))))


def finished(c: Cluster, event_ids: list[str], timeout: float = 60.0) -> list[dict[str, Any]]:
    assert c.api is not None
    deadline = time.monotonic() + timeout
    while True:
        runs = [httpx.get(f"{c.api.url}/v1/events/{e}/runs", timeout=30).json()["data"] for e in event_ids]
        if all(len(r) == 1 and r[0]["status"] != "Running" for r in runs):
            return [r[0] for r in runs]
        assert time.monotonic() < deadline, runs
        time.sleep(0.2)


def test_two_api_processes_share_one_rate_limit(cluster: Cluster) -> None:
    events = send_through_both(cluster, "flow/rated", [{"k": "split", "n": n} for n in range(20)])
    runs = finished(cluster, events)
    statuses = sorted(r["status"] for r in runs)
    assert statuses == ["Completed"] * 2 + ["Skipped"] * 18, runs


def test_two_api_processes_share_one_throttle(cluster: Cluster) -> None:
    sent = time.time()
    runs = finished(cluster, send_through_both(cluster, "flow/throttled", [{}, {}, {}]))
    assert [r["status"] for r in runs] == ["Completed"] * 3
    at = sorted(r["output"] for r in runs)
    assert at[1] - sent >= 1.99 and at[2] - sent >= 3.99, at
    assert at[1] - at[0] >= 1.5 and at[2] - at[1] >= 1.5, at


def test_a_singleton_cancel_reaches_the_executor_that_owns_the_run(cluster: Cluster) -> None:
    [first] = send_through_both(cluster, "flow/single-cancel", [{"sleep": 60, "n": 1}])
    time.sleep(1.0)  # the first run is asleep on some executor
    [second] = send_through_both(cluster, "flow/single-cancel", [{"n": 2}])
    runs = finished(cluster, [first, second], timeout=30)
    assert [(r["status"], r["output"]) for r in runs] == [("Cancelled", None), ("Completed", 2)]
