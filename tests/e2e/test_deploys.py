"""Deploys that lose nothing: real processes, real signals, real sockets."""

from __future__ import annotations

import collections
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import (
    DevServer,
    Proc,
    complete_lines,
    free_port,
    http_status,
    start_worker,
    started_steps,
    step_counts,
    wait_for_log,
    wait_until,
)
from tests.e2e.proxy import CuttingProxy

# Short leases so lost workers are noticed in seconds, not minutes.
FAST_LEASES = ["--lease-duration", "8", "--extend-lease-interval", "2", "--drain-timeout", "10"]


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevServer]:
    server = DevServer(tmp_path, extra=FAST_LEASES).start()
    yield server
    server.stop()


def active_worker(dev: DevServer, tmp: Path, name: str, **kw: object) -> Proc:
    proc = start_worker(dev, tmp, name=name, instance_id=name, **kw)  # type: ignore[arg-type]
    wait_for_log(proc, "worker state ACTIVE")
    return proc


def assert_no_step_ran_twice(tmp: Path) -> None:
    repeated = {k: v for k, v in step_counts(tmp).items() if v > 1}
    assert repeated == {}, f"completed steps that ran again: {repeated}"


@pytest.mark.serial  # a latency figure: run alone (see the Makefile)
def test_sigterm_during_a_step_finishes_it_and_exits_zero(dev: DevServer, tmp_path: Path) -> None:
    health = free_port()
    a = active_worker(dev, tmp_path, "a", extra_args=["--health-port", str(health)])
    b: Proc | None = None
    try:
        assert http_status(f"http://127.0.0.1:{health}/ready") == 200
        (eid,) = dev.send([{"name": "e2e/slow", "data": {"seconds": 5}}])
        wait_until(lambda: len(started_steps(tmp_path)) == 1, 15, "the 5 s step to start on a")
        b = active_worker(dev, tmp_path, "b")  # will finish the run after a leaves
        a.signal(signal.SIGTERM)
        sent = time.monotonic()
        wait_until(lambda: http_status(f"http://127.0.0.1:{health}/ready") == 503, 5, "/ready to turn 503")
        assert time.monotonic() - sent < 1.0
        assert http_status(f"http://127.0.0.1:{health}/live") == 200  # alive while draining
        assert a.wait(30) == 0, a.output()[-3000:]
        (run,) = dev.wait_runs([eid], timeout=30)
        assert run["status"] == "Completed" and run["output"] == "slow done"
        assert step_counts(tmp_path)[(run["run_id"], "slow-step")] == 1
        assert [w for (_, _, w) in started_steps(tmp_path)] == ["a"]
        assert dev.proc is not None and "reason=WORKER_SHUTDOWN" in dev.proc.output()
    finally:
        a.stop()
        if b is not None:
            b.stop()


def test_rolling_restart_of_three_workers_loses_nothing(dev: DevServer, tmp_path: Path) -> None:
    limit = ["--max-worker-concurrency", "10"]
    workers = [active_worker(dev, tmp_path, f"w{i}", extra_args=limit) for i in range(3)]
    ids = dev.send([{"name": "e2e/five", "data": {"delay": 0.1}} for _ in range(300)])
    try:
        for i, progress in enumerate((300, 650, 1000)):  # of 1,500 steps
            wait_until(lambda p=progress: sum(step_counts(tmp_path).values()) >= p, 120, f"{progress} steps")
            old = workers[i]
            workers[i] = active_worker(dev, tmp_path, f"w{i}-next", extra_args=limit)
            old.signal(signal.SIGTERM)
            assert old.wait(60) == 0, old.output()[-3000:]
        runs = dev.wait_runs(ids, timeout=180)
        assert [r["status"] for r in runs] == ["Completed"] * 300
        assert all(r["output"] == 10 for r in runs)
        assert sum(step_counts(tmp_path).values()) == 1500
        assert_no_step_ran_twice(tmp_path)
        by_worker = collections.Counter(w for (_, _, w) in started_steps(tmp_path))
        assert {"w0", "w1", "w2"} <= set(by_worker), by_worker  # the old generation worked
        assert any(name.endswith("-next") for name in by_worker), by_worker  # and the new one did too
    finally:
        for w in workers:
            w.stop()


def test_sigkill_of_one_worker_reruns_only_its_in_flight_steps(dev: DevServer, tmp_path: Path) -> None:
    victim = active_worker(dev, tmp_path, "victim")
    survivor = active_worker(dev, tmp_path, "survivor")
    try:
        ids = dev.send([{"name": "e2e/five", "data": {"delay": 0.3}} for _ in range(60)])

        def on_victim_unfinished() -> set[tuple[str, str]]:
            """Steps the victim started and did not finish (running, or cut short by the kill)."""
            started = {(run, step) for (run, step, w) in started_steps(tmp_path) if w == "victim"}
            return started - {(run, step) for (run, step, pid) in _finished_rows(tmp_path) if pid == str(victim.pid)}

        # Load built up, and steps running on the victim right now: a slow
        # check must not find its runs already done.
        wait_until(
            lambda: len(started_steps(tmp_path)) > 80 and len(on_victim_unfinished()) >= 5,
            60,
            "load to build up with steps running on the victim",
        )
        victim.signal(signal.SIGKILL)
        victim.wait(10)
        runs = dev.wait_runs(ids, timeout=120)
        assert [r["status"] for r in runs] == ["Completed"] * 60
        starts = collections.Counter((run, step) for (run, step, _) in started_steps(tmp_path))
        on_victim = [(run, step) for (run, step, w) in started_steps(tmp_path) if w == "victim"]
        in_flight_on_victim = on_victim_unfinished()
        # A step is stored before the next one of its run starts (a checkpoint is
        # answered once stored; a reply ends its request): whatever the victim
        # ran with a successor started there was delivered, and must not run again.
        delivered = {(run, f"s{int(step[1:]) - 1}") for (run, step) in on_victim if step != "s0"}
        twice = {k for k, n in starts.items() if n > 1}
        assert in_flight_on_victim, "the kill should have interrupted some steps"
        # Every step cut short runs again; besides those, only steps whose result
        # was still on its way from the victim (finished, not yet stored) may.
        assert in_flight_on_victim <= twice
        assert twice <= set(on_victim), f"steps the victim never ran ran twice: {twice - set(on_victim)}"
        assert twice.isdisjoint(delivered), f"delivered steps ran again: {twice & delivered}"
        assert all(n <= 2 for n in starts.values())
        finished_twice = {k for k, n in step_counts(tmp_path).items() if n > 1}
        assert finished_twice <= twice - in_flight_on_victim  # lost on the way, never stored twice
    finally:
        victim.stop()
        survivor.stop()


def _finished_rows(tmp: Path) -> list[tuple[str, str, str]]:
    rows = [line.split() for line in complete_lines(tmp / "steps.log")]
    return [(r[0], r[1], r[2]) for r in rows]


def test_sigterm_to_connect_dev_under_load_then_restart(tmp_path: Path, database_url: str | None) -> None:
    dev = DevServer(tmp_path, extra=FAST_LEASES, database_url=database_url).start()
    workers = [active_worker(dev, tmp_path, f"w{i}") for i in range(2)]
    try:
        ids = dev.send([{"name": "e2e/five", "data": {"delay": 0.2}} for _ in range(60)])
        wait_until(lambda: len(started_steps(tmp_path)) > 60, 60, "load to build up")
        assert dev.proc is not None
        dev.proc.signal(signal.SIGTERM)
        assert dev.proc.wait(30) == 0
        first_life = dev.proc.output()
        assert "gateway draining" in first_life
        for w in workers:
            wait_for_log(w, "gateway is draining")
        time.sleep(1.0)  # workers keep retrying while nothing listens
        dev.start()
        runs = dev.wait_runs(ids, timeout=120)
        assert [r["status"] for r in runs] == ["Completed"] * 60
        assert all(r["output"] == 10 for r in runs)
        assert sum(step_counts(tmp_path).values()) == 300
        assert_no_step_ran_twice(tmp_path)
        for w in workers:
            assert w.popen.poll() is None  # they survived the restart
            wait_until(lambda w=w: w.output().count("worker connected:") >= 2, 30, "the worker to reconnect")
            assert "worker state RECONNECTING" in w.output()
    finally:
        for w in workers:
            w.stop()
        dev.stop()


def test_blocked_event_loop_keeps_lease_and_connection(dev: DevServer, tmp_path: Path) -> None:
    """One worker's loop sleeps, another's spins on the GIL, both for 120 s."""
    seconds = float(os.environ.get("BLOCK_SECONDS", "120"))
    one = ["--max-worker-concurrency", "1"]
    workers = [active_worker(dev, tmp_path, name, extra_args=one) for name in ("sleeper", "spinner")]
    try:
        ids = dev.send([{"name": "e2e/block", "data": {"seconds": seconds, "mode": m}} for m in ("sleep", "spin")])
        runs = dev.wait_runs(ids, timeout=seconds + 90)
        assert [r["status"] for r in runs] == ["Completed", "Completed"], runs
        assert [r["output"] for r in runs] == [f"blocked {seconds:.0f}s"] * 2
        assert sorted(w for (_, _, w) in started_steps(tmp_path)) == ["sleeper", "spinner"]  # each ran once
        for w in workers:
            out = w.output()
            assert "lease lost" not in out
            assert out.count("worker connected:") == 1, out[-3000:]  # no reconnection
        assert set(step_counts(tmp_path).values()) == {1}
    finally:
        for w in workers:
            w.stop()


@pytest.mark.parametrize("checkpoints", [False, True], ids=["reply", "checkpoint"])
def test_step_result_survives_a_socket_cut_before_its_ack(tmp_path: Path, checkpoints: bool) -> None:
    """The first message after the step body is cut with the socket: without
    checkpoints that is the reply, which then goes by /v0/connect/flush; with
    them it is the checkpoint, which counts as refused, so the request ends
    with the step and its reply goes over the new connection.

    The extension interval is longer than the worker's 5 s wait for an ACK: a
    finished request's lease is not extended, and once the cut connection's
    interval ran out the request would reach the worker again, which answers
    it with the same reply over its new connection instead of /flush."""
    leases = ["--lease-duration", "60", "--extend-lease-interval", "20", "--drain-timeout", "10"]
    dev = DevServer(tmp_path, extra=[*leases, *([] if checkpoints else ["--no-checkpoint-steps"])]).start()
    steps_log = tmp_path / "steps.log"
    proxy = CuttingProxy(dev.gateway_port, should_cut=steps_log.exists)
    port = proxy.start()
    w = active_worker(dev, tmp_path, "cut", env={"CONNECT_GATEWAY_URL": f"ws://127.0.0.1:{port}/v0/connect"})
    try:
        (eid,) = dev.send([{"name": "e2e/slow", "data": {"seconds": 0.5}}])
        (run,) = dev.wait_runs([eid], timeout=60)
        assert run["status"] == "Completed" and run["output"] == "slow done"
        assert proxy.cuts == 1
        if not checkpoints:
            wait_for_log(w, "delivered via /v0/connect/flush")
        assert step_counts(tmp_path)[(run["run_id"], "slow-step")] == 1
        assert len(started_steps(tmp_path)) == 1
    finally:
        w.stop()
        proxy.stop()
        dev.stop()


def test_official_worker_survives_sigterm_during_a_step(dev: DevServer, tmp_path: Path) -> None:
    env = dict(os.environ, CONNECT_API_URL=dev.url, OFFICIAL_SIGNALS="1", STEP_LOG=str(tmp_path / "steps.log"))
    official = Proc([sys.executable, "tests/compat/official_worker.py"], env, tmp_path / "official.log")
    b: Proc | None = None
    try:
        assert dev.proc is not None
        wait_for_log(dev.proc, "worker ready: connection=", timeout=60)
        (eid,) = dev.send([{"name": "compat/slow", "data": {"seconds": 5}}])
        wait_for_log(official, "slow step started", timeout=30)
        b = active_worker(dev, tmp_path, "b")  # ours; serves nothing of compat-app
        official.signal(signal.SIGTERM)
        assert official.wait(60) == 0, official.output()[-3000:]
        # The official worker finished and delivered the step before exiting.
        assert (tmp_path / "steps.log").read_text().count("slow-step") == 1
        official2 = Proc([sys.executable, "tests/compat/official_worker.py"], env, tmp_path / "official2.log")
        try:
            (run,) = dev.wait_runs([eid], timeout=60)
            assert run["status"] == "Completed" and run["output"] == "slow done"
            assert (tmp_path / "steps.log").read_text().count("slow-step") == 1
        finally:
            official2.stop()
    finally:
        official.stop()
        if b is not None:
            b.stop()
