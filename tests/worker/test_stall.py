"""A worker whose event loop is blocked takes no new work until it turns again.

`LoopWatch` driven directly, then real processes: `connect dev`, a worker
whose step blocks its loop with `time.sleep`, and a second worker.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from connect.worker.stall import LoopWatch
from tests.e2e.harness import DevServer, Proc, free_port, start_worker, started_steps, wait_for_log, wait_until

T0 = 1_000.0


def test_a_probe_not_run_within_the_threshold_means_stalled_and_a_prompt_one_recovered() -> None:
    w = LoopWatch(5.0, T0)
    assert w.interval == 1.0 and w.probe_due(T0)
    w.probe_sent(T0)
    assert not w.probe_due(T0 + 2)  # one probe at a time
    assert w.next_deadline(T0) == T0 + 1  # no longer than an interval between looks
    assert w.next_deadline(T0 + 4.5) == T0 + 5
    assert not w.check(T0 + 4.9) and not w.stalled
    assert w.check(T0 + 5) and w.stalled and w.stalled_for(T0 + 7) == 7
    assert not w.check(T0 + 6)  # reported once
    assert w.next_deadline(T0 + 6) == T0 + 7  # stalled: once an interval, never in a busy loop
    assert not w.probe_ran(T0, T0 + 60)  # the stall ended: its probe ran late, still stalled
    assert w.stalled and not w.probe_due(T0 + 60.5) and w.probe_due(T0 + 61)
    w.probe_sent(T0 + 61)
    assert not w.probe_ran(T0 + 1, T0 + 61.1)  # not the outstanding probe
    assert w.probe_ran(T0 + 61, T0 + 61.1) and not w.stalled  # a prompt turn: recovered
    assert w.next_deadline(T0 + 61.1) == pytest.approx(T0 + 62.1)


def test_a_loop_that_turns_is_never_stalled() -> None:
    w = LoopWatch(2.0, T0)
    now = T0
    for _ in range(100):
        assert w.probe_due(now)
        w.probe_sent(now)
        assert not w.check(now + 1.9)
        assert not w.probe_ran(now, now + 1.9)
        now = w.next_deadline(now + 1.9)
    assert not w.stalled


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_a_threshold_is_more_than_zero(bad: float) -> None:
    with pytest.raises(ValueError, match="more than 0"):
        LoopWatch(bad, T0)


@pytest.mark.parametrize("bad", [0.0, -5.0])
def test_connect_refuses_a_stall_threshold_that_is_not_positive(bad: float) -> None:
    from connect.worker import connect
    from tests.worker.process_app import client

    with pytest.raises(ValueError, match="stall_threshold must be more than 0 seconds or None"):
        asyncio.run(connect([(client, list(client.functions))], handle_shutdown_signals=(), stall_threshold=bad))


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevServer]:
    server = DevServer(tmp_path).start()
    yield server
    server.stop()


def _ready(port: int) -> tuple[int, bool] | None:
    try:
        resp = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2)
    except httpx.HTTPError:
        return None
    return resp.status_code, bool(resp.json().get("stalled", False))


def test_a_blocked_worker_takes_no_new_work_until_its_loop_turns_again(dev: DevServer, tmp_path: Path) -> None:
    health = free_port()
    blocker = start_worker(
        dev, tmp_path, name="blocker", instance_id="blocker", extra_args=["--health-port", str(health)]
    )
    other: Proc | None = None
    try:
        wait_for_log(blocker, "worker state ACTIVE")
        wait_until(lambda: _ready(health) == (200, False), 30, "the blocked worker to be ready")
        (block,) = dev.send([{"name": "e2e/block", "data": {"seconds": 40, "mode": "sleep"}}])
        wait_until(lambda: [s[1:] for s in started_steps(tmp_path)] == [("block", "blocker")], 30, "the block")
        other = start_worker(dev, tmp_path, name="other", instance_id="other")
        wait_for_log(other, "worker state ACTIVE")

        # Within the default threshold (5 s) and a probe interval, its /ready says so.
        wait_until(lambda: _ready(health) == (503, True), 30, "/ready to turn 503 while the loop is blocked")
        wait_for_log(blocker, "taking no new work until it does (WORKER_PAUSE sent)")
        ids = dev.send([{"name": "e2e/three", "data": {"n": n}} for n in range(10)])
        runs = dev.wait_runs(ids, timeout=60)
        assert [r["status"] for r in runs] == ["Completed"] * 10
        assert {s[2] for s in started_steps(tmp_path) if s[1] != "block"} == {"other"}  # none waited for the blocker
        assert "dispatches again" not in blocker.output()

        # Once the loop turns again it takes work again, over a new connection, and its step was not lost.
        (run,) = dev.wait_runs([block], timeout=120)
        assert run["status"] == "Completed" and run["output"] == "blocked 40s"
        wait_until(lambda: _ready(health) == (200, False), 30, "/ready to be 200 again")
        assert blocker.output().count("worker connected:") == 2
        assert "lease lost" not in blocker.output()
        other.signal(signal.SIGTERM)
        assert other.wait(60) == 0
        (again,) = dev.send([{"name": "e2e/three", "data": {"n": 99}}])
        (done,) = dev.wait_runs([again], timeout=60)
        assert done["status"] == "Completed"
        assert {s[2] for s in started_steps(tmp_path) if s[0] == done["run_id"]} == {"blocker"}
        assert [s for s in started_steps(tmp_path) if s[1] == "block"] == [(run["run_id"], "block", "blocker")]
    finally:
        blocker.stop()
        if other is not None:
            other.stop()
