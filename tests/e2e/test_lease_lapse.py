"""A step lost with its worker: re-dispatched after the documented time, without
spending a retry, and answered by the lost worker's reply if that comes first.

Real `connect dev` and `connect worker` processes, real signals, a proxy that
cuts the worker's socket; the store is read from its SQLite file.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

from protocol.leases import EXTENSION_SLACK
from tests.e2e.harness import DevServer, Proc, start_worker, started_steps, step_counts, wait_for_log, wait_until
from tests.e2e.proxy import BlockingProxy

TARGET = "tests.e2e.lease_app:client"


def _worker(dev: DevServer, tmp: Path, name: str, env: dict[str, str] | None = None) -> Proc:
    proc = start_worker(
        dev, tmp, name=name, instance_id=name, target=TARGET, env={"RELEASE_FILE": str(tmp / "release"), **(env or {})}
    )
    wait_for_log(proc, "worker state ACTIVE")
    return proc


def _started_on(tmp: Path) -> list[str]:
    return [worker for (_, _, worker) in started_steps(tmp)]


def _lease_ids(db: Path, instance: str | None = None) -> set[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT lease_id, instance_id FROM leases").fetchall()
    return {lease for (lease, holder) in rows if instance is None or holder == instance}


def _wait_for_an_extension(db: Path, instance: str) -> None:
    """Until `instance` has extended the lease of the step it runs: it has
    acknowledged the request then (a worker lost before its ACK does not cost
    a lease lapse: the request is simply forwarded again)."""
    wait_until(lambda: len(_lease_ids(db, instance)) == 1, 30, f"{instance}'s lease to be stored")
    first = _lease_ids(db, instance)
    wait_until(lambda: len(_lease_ids(db, instance) - first) == 1, 30, f"{instance} to extend its lease")


def test_a_step_lost_with_its_worker_runs_again_without_spending_a_retry(tmp_path: Path) -> None:
    """`retries=0`, the worker running the step is SIGKILLed, another worker is
    connected: the step runs again there and the run completes."""
    dev = DevServer(tmp_path, extra=["--lease-duration", "6", "--extend-lease-interval", "2"]).start()
    a = _worker(dev, tmp_path, "a")
    b: Proc | None = None
    try:
        (eid,) = dev.send([{"name": "lease/held-once"}])
        wait_until(lambda: _started_on(tmp_path) == ["a"], 30, "the step to start on a")
        _wait_for_an_extension(dev.db, "a")
        b = _worker(dev, tmp_path, "b")
        a.signal(signal.SIGKILL)
        a.wait(10)
        (tmp_path / "release").touch()
        (run,) = dev.wait_runs([eid], timeout=60)
        assert (run["status"], run["output"]) == ("Completed", "released"), run
        assert _started_on(tmp_path) == ["a", "b"]
        assert step_counts(tmp_path) == {(run["run_id"], "held"): 1}
    finally:
        a.stop()
        if b is not None:
            b.stop()
        dev.stop()


def test_an_unclean_disconnect_hands_its_steps_on_after_one_extension_interval(tmp_path: Path) -> None:
    """The README's figure: a step of a worker whose connection dropped without a
    clean close is dispatched again once its next extension is overdue (one
    extension interval after the last, plus EXTENSION_SLACK), long before its
    lease (60 s here) would lapse."""
    interval = 3.0
    dev = DevServer(tmp_path, extra=["--lease-duration", "60", "--extend-lease-interval", str(interval)]).start()
    a = _worker(dev, tmp_path, "a")
    b: Proc | None = None
    try:
        (eid,) = dev.send([{"name": "lease/held-once"}])
        wait_until(lambda: _started_on(tmp_path) == ["a"], 30, "the step to start on a")
        _wait_for_an_extension(dev.db, "a")
        b = _worker(dev, tmp_path, "b")
        (tmp_path / "release").touch()  # a is held by the kill; b's copy may finish
        killed = time.monotonic()
        a.signal(signal.SIGKILL)
        a.wait(10)
        time.sleep(max(0.0, killed + interval - 1.5 - time.monotonic()))
        assert _started_on(tmp_path) == ["a"], "dispatched again before the extension interval ran out"
        time.sleep(max(0.0, killed + interval + EXTENSION_SLACK + 2.5 - time.monotonic()))
        assert _started_on(tmp_path) == ["a", "b"], "not dispatched again within the extension interval"
        (run,) = dev.wait_runs([eid], timeout=60)
        assert run["status"] == "Completed", run
    finally:
        a.stop()
        if b is not None:
            b.stop()
        dev.stop()


def test_a_reply_flushed_after_the_lease_lapsed_is_the_steps_result(tmp_path: Path) -> None:
    """The socket is cut while the step runs and stays cut until its lease has
    lapsed; the worker then delivers the result through /v0/connect/flush. That
    result completes the step: it does not run a second time when the worker is
    back."""
    dev = DevServer(tmp_path, extra=["--lease-duration", "6", "--extend-lease-interval", "2"]).start()
    proxy = BlockingProxy(dev.gateway_port)
    port = proxy.start()
    a = _worker(dev, tmp_path, "a", env={"CONNECT_GATEWAY_URL": f"ws://127.0.0.1:{port}/v0/connect"})
    try:
        (eid,) = dev.send([{"name": "lease/held-retried"}])
        wait_until(lambda: _started_on(tmp_path) == ["a"], 30, "the step to start on a")
        _wait_for_an_extension(dev.db, "a")
        proxy.cut()
        wait_until(lambda: not _lease_ids(dev.db), 60, "the step's lease to lapse")
        (tmp_path / "release").touch()
        wait_for_log(a, "delivered via /v0/connect/flush", timeout=60)
        proxy.restore()
        (run,) = dev.wait_runs([eid], timeout=90)
        assert (run["status"], run["output"]) == ("Completed", "released"), run
        assert _started_on(tmp_path) == ["a"], "the step ran again"
        assert step_counts(tmp_path) == {(run["run_id"], "held"): 1}
    finally:
        a.stop()
        proxy.stop()
        dev.stop()


def test_max_lease_lapses_fails_a_step_that_loses_every_worker(tmp_path: Path) -> None:
    """`--max-lease-lapses 1`: the step is dispatched again once after its
    worker is lost; losing the second worker too fails the run, naming the bound."""
    dev = DevServer(
        tmp_path, extra=["--lease-duration", "6", "--extend-lease-interval", "1", "--max-lease-lapses", "1"]
    ).start()
    workers = [_worker(dev, tmp_path, "a")]  # registers the function: the event then starts a run
    try:
        (eid,) = dev.send([{"name": "lease/held-once"}])
        for name in ("a", "b"):
            if name != "a":
                workers.append(_worker(dev, tmp_path, name))
            wait_until(lambda n=name: _started_on(tmp_path)[-1:] == [n], 30, f"the step to start on {name}")
            _wait_for_an_extension(dev.db, name)
            workers[-1].signal(signal.SIGKILL)
            workers[-1].wait(10)
        (run,) = dev.wait_runs([eid], timeout=60)
        assert run["status"] == "Failed", run
        assert run["output"]["name"] == "TooManyLeaseLapses"
        assert "--max-lease-lapses 1" in run["output"]["message"]
        assert _started_on(tmp_path) == ["a", "b"]
    finally:
        for proc in workers:
            proc.stop()
        dev.stop()
