"""Events become completed runs through real `connect dev` and worker processes,
on each store engine (the `database_url` fixture: SQLite, then PostgreSQL)."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import DevServer, Proc, complete_lines, start_worker, step_counts, wait_for_log


@pytest.fixture
def dev(tmp_path: Path, database_url: str | None) -> Iterator[DevServer]:
    server = DevServer(tmp_path, database_url=database_url).start()
    yield server
    server.stop()


@pytest.fixture
def worker(dev: DevServer, tmp_path: Path) -> Iterator[Proc]:
    proc = start_worker(dev, tmp_path)
    wait_for_log(proc, "worker state ACTIVE")
    yield proc
    proc.stop()


def expected(n: int) -> int:
    return ((n + 1) * 2) + 3


def test_200_events_complete_a_three_step_function(dev: DevServer, worker: Proc, tmp_path: Path) -> None:
    ids = dev.send([{"name": "e2e/three", "data": {"n": i}} for i in range(200)])
    assert len(ids) == 200 and len(set(ids)) == 200
    runs = dev.wait_runs(ids, timeout=120)
    assert len(runs) == 200
    for i, (eid, run) in enumerate(zip(ids, runs, strict=True)):
        assert run["status"] == "Completed", run
        assert run["event_id"] == eid
        assert run["output"] == {"n": i, "result": expected(i)}
        assert run["run_started_at"] and run["ended_at"]
        one = httpx.get(f"{dev.url}/v1/runs/{run['run_id']}").json()["data"]
        assert one["status"] == "Completed" and one["output"] == run["output"]
    counts = step_counts(tmp_path)
    assert sum(counts.values()) == 600
    assert set(counts.values()) == {1}


def test_step_fails_twice_then_succeeds_on_attempt_three(dev: DevServer, worker: Proc, tmp_path: Path) -> None:
    (eid,) = dev.send([{"name": "e2e/flaky", "data": {}}])
    (run,) = dev.wait_runs([eid], timeout=60)
    assert run["status"] == "Completed", run
    assert run["output"]["value"] == "finally"
    attempts = sorted(step for (_, step) in step_counts(tmp_path))
    assert attempts == ["flaky-attempt-0", "flaky-attempt-1", "flaky-attempt-2"]


def test_non_retriable_error_fails_at_once(dev: DevServer, worker: Proc) -> None:
    started = time.monotonic()
    (eid,) = dev.send([{"name": "e2e/fatal", "data": {}}])
    (run,) = dev.wait_runs([eid], timeout=60)
    assert run["status"] == "Failed", run
    assert "the card was declined" in str(run["output"])
    assert time.monotonic() - started < 20  # no retry backoff was spent


def test_sync_handler_and_wildcard_trigger(dev: DevServer, worker: Proc) -> None:
    ids = dev.send([{"name": "e2e/sync"}, {"name": "e2e-wild/deep/name"}])
    sync_run, wild_run = dev.wait_runs(ids, timeout=60)
    assert sync_run["status"] == "Completed" and sync_run["output"] == "sync-done"
    assert wild_run["status"] == "Completed" and wild_run["output"] == "e2e-wild/deep/name"


def test_event_without_matching_function_creates_no_run(dev: DevServer) -> None:
    (eid,) = dev.send([{"name": "nobody/listens"}])
    assert dev.runs(eid) == []


def test_bad_input_gets_specific_errors(dev: DevServer) -> None:
    bad_json = httpx.post(f"{dev.url}/e/key", content=b"{not json")
    assert bad_json.status_code == 400 and "malformed JSON" in bad_json.json()["error"]
    no_name = httpx.post(f"{dev.url}/e/key", json=[{"data": {}}])
    assert no_name.status_code == 400 and "name" in no_name.json()["error"]
    empty_name = httpx.post(f"{dev.url}/e/key", json={"name": ""})
    assert empty_name.status_code == 400
    unknown = httpx.get(f"{dev.url}/v1/nothing-here")
    assert unknown.status_code == 404 and "no route" in unknown.json()["error"]
    missing = httpx.get(f"{dev.url}/v1/runs/01J00000000000000000000000")
    assert missing.status_code == 404
    flush = httpx.post(f"{dev.url}/v0/connect/flush", content=b"")
    assert flush.status_code == 400
    # The server is unharmed.
    assert httpx.get(f"{dev.url}/health").status_code == 200


def test_sigkill_mid_way_then_restart_completes_everything_once(tmp_path: Path, database_url: str | None) -> None:
    dev = DevServer(tmp_path, database_url=database_url).start()
    worker = start_worker(dev, tmp_path)
    try:
        wait_for_log(worker, "worker state ACTIVE")
        ids = dev.send([{"name": "e2e/three", "data": {"n": i, "delay": 0.3}} for i in range(50)])
        # Wait until the runs are mid-way: some steps done, none finished.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(step_counts(tmp_path).values()) < 50:
            time.sleep(0.05)
        assert sum(step_counts(tmp_path).values()) >= 50
        dev.kill()
        before = step_counts(tmp_path)
        dev.start()
        runs = dev.wait_runs(ids, timeout=120)
        assert [r["status"] for r in runs] == ["Completed"] * 50
        for i, run in enumerate(runs):
            assert run["output"] == {"n": i, "result": expected(i)}
        after = step_counts(tmp_path)
        repeated = {k: v for k, v in after.items() if v > 1}
        assert repeated == {}, f"steps that ran twice: {repeated}"
        assert sum(after.values()) == 150
        assert sum(before.values()) < 150
    finally:
        worker.stop()
        dev.stop()


def test_four_workers_respect_max_worker_concurrency(tmp_path: Path) -> None:
    dev = DevServer(tmp_path).start()
    workers = [
        start_worker(
            dev,
            tmp_path,
            name=f"w{i}",
            instance_id=f"instance-{i}",
            max_concurrency=2,
            env={"IN_FLIGHT_LOG": str(tmp_path / "inflight.log")},
        )
        for i in range(4)
    ]
    try:
        for w in workers:
            wait_for_log(w, "worker state ACTIVE")
        ids = dev.send([{"name": "e2e/three", "data": {"n": i, "delay": 0.02}} for i in range(100)])
        runs = dev.wait_runs(ids, timeout=180)
        assert all(r["status"] == "Completed" for r in runs)
        peaks: dict[str, int] = collections.defaultdict(int)
        for line in complete_lines(tmp_path / "inflight.log"):
            name, count = line.split()
            peaks[name] = max(peaks[name], int(count))
        assert set(peaks) == {"w0", "w1", "w2", "w3"}, peaks  # every worker took work
        assert max(peaks.values()) <= 2, peaks
        assert max(peaks.values()) == 2, peaks  # the limit was actually reached
    finally:
        for w in workers:
            w.stop()
        dev.stop()


@pytest.mark.parametrize(
    ("dev_args", "worker_env", "dev_log", "worker_log"),
    [
        (
            ["--poll-window-ms", "2"],
            {"CONNECT_POLL_WINDOW_MS": "1.5"},
            "poll window up to 2 ms",
            "poll window up to 1.5 ms",
        ),
        (["--poll-window-ms", "0"], {"CONNECT_POLL_WINDOW_MS": "0"}, "poll window off", "poll window off"),
        # the platform polls by default, a worker (the user's process) only when asked
        ([], {"CONNECT_POLL_WINDOW_MS": ""}, "poll window up to 1 ms", "poll window off"),
    ],
    ids=["set", "off", "default"],
)
def test_runs_complete_with_poll_windows_set_or_off(
    tmp_path: Path,
    dev_args: list[str],
    worker_env: dict[str, str],
    dev_log: str,
    worker_log: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONNECT_LOG_LEVEL", "debug")  # the poll window is a tuning detail, logged at debug
    dev = DevServer(tmp_path, extra=dev_args).start()
    try:
        assert dev.proc is not None
        wait_for_log(dev.proc, dev_log)
        proc = start_worker(dev, tmp_path, env=worker_env | {"CONNECT_LOG_LEVEL": "debug"})
        try:
            wait_for_log(proc, "worker state ACTIVE")
            assert worker_log in proc.output()
            ids = dev.send([{"name": "e2e/three", "data": {"n": i}} for i in range(20)])
            runs = dev.wait_runs(ids, timeout=60)
            assert [run["output"] for run in runs] == [{"n": i, "result": expected(i)} for i in range(20)]
        finally:
            assert proc.stop() == 0
    finally:
        dev.stop()
