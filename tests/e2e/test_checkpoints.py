"""Step checkpoints end to end: one request runs many steps, each stored as it
finishes, so a lost worker, a cancellation or a failing step costs no step
that already finished. Real `connect dev` and worker processes serving
`tests/e2e/checkpoint_app.py`.
"""

from __future__ import annotations

import collections
import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import DevServer, Proc, complete_lines, start_worker, wait_for_log, wait_until

# Short leases so a killed worker's request is given up in seconds, not minutes.
FAST_LEASES = ["--lease-duration", "8", "--extend-lease-interval", "2", "--drain-timeout", "10"]
OUTPUT = {"squares": [1, 4, 9, 16, 25]}

StartWorker = Callable[[str], Proc]


@pytest.fixture
def dev(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DevServer]:
    """`connect dev` with short leases; parametrize indirectly to add flags. On
    the engine of `database_url` for a test that asks for it, else SQLite."""
    url = request.getfixturevalue("database_url") if "database_url" in request.fixturenames else None
    server = DevServer(tmp_path, extra=[*FAST_LEASES, *getattr(request, "param", [])], database_url=url).start()
    yield server
    server.stop()


@pytest.fixture
def workers(dev: DevServer, tmp_path: Path) -> Iterator[StartWorker]:
    """Starts a worker serving checkpoint_app and waits until it is ACTIVE."""
    started: list[Proc] = []

    def start(name: str) -> Proc:
        env = {"CHECKPOINT_LOG": str(tmp_path / "checkpoints.jsonl")}
        proc = start_worker(
            dev, tmp_path, name=name, instance_id=name, target="tests.e2e.checkpoint_app:client", env=env
        )
        started.append(proc)
        wait_for_log(proc, "worker state ACTIVE")
        return proc

    yield start
    for proc in started:
        proc.stop()


def send(dev: DevServer, **data: Any) -> tuple[str, str]:
    """Start a run of `five`; (event id, run id)."""
    [event_id] = dev.send([{"name": "ckpt/five", "data": data}])
    wait_until(lambda: bool(dev.runs(event_id)), 30, "the run to be created")
    return event_id, dev.runs(event_id)[0]["run_id"]


def rows(tmp: Path, run_id: str, kind: str) -> list[dict[str, Any]]:
    """What the run's handler (`invoked`) or step bodies (`start`, `end`) logged, in order."""
    logged = [json.loads(line) for line in complete_lines(tmp / "checkpoints.jsonl")]
    return [row for row in logged if row["run"] == run_id and row["kind"] == kind]


def starts_per_step(tmp: Path, run_id: str) -> dict[int, int]:
    return dict(sorted(collections.Counter(row["step"] for row in rows(tmp, run_id, "start")).items()))


def finished(dev: DevServer, event_id: str) -> dict[str, Any]:
    [run] = dev.wait_runs([event_id], timeout=120)
    return run


def test_five_steps_run_in_one_request(dev: DevServer, workers: StartWorker, tmp_path: Path) -> None:
    worker = workers("w")
    event_id, run_id = send(dev)
    run = finished(dev, event_id)
    assert run["status"] == "Completed", (run, worker.output()[-3000:])
    assert run["output"] == OUTPUT
    starts = rows(tmp_path, run_id, "start")
    assert [row["step"] for row in starts] == [1, 2, 3, 4, 5]
    assert len({row["request"] for row in starts}) == 1, starts
    assert [row["request"] for row in rows(tmp_path, run_id, "invoked")] == [starts[0]["request"]]


@pytest.mark.parametrize("dev", [["--no-checkpoint-steps"]], indirect=True, ids=["no-checkpoint-steps"])
def test_no_checkpoint_steps_runs_one_step_per_request(dev: DevServer, workers: StartWorker, tmp_path: Path) -> None:
    worker = workers("w")
    event_id, run_id = send(dev)
    run = finished(dev, event_id)
    assert run["status"] == "Completed", (run, worker.output()[-3000:])
    assert run["output"] == OUTPUT
    assert starts_per_step(tmp_path, run_id) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    assert len({row["request"] for row in rows(tmp_path, run_id, "start")}) == 5
    invoked = rows(tmp_path, run_id, "invoked")
    assert len({row["request"] for row in invoked}) == len(invoked) == 6  # five steps, then the return


@pytest.mark.parametrize("dev_dies_too", [False, True], ids=["worker-killed", "worker-and-dev-killed"])
def test_sigkill_mid_step_reruns_only_that_step(
    database_url: str | None, dev: DevServer, workers: StartWorker, tmp_path: Path, dev_dies_too: bool
) -> None:
    gate = tmp_path / "gate"
    victim = workers("victim")
    event_id, run_id = send(dev, step=3, gate=str(gate))
    wait_until(lambda: starts_per_step(tmp_path, run_id).get(3) == 1, 60, "step 3 to start on the victim")
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    if dev_dies_too:  # the checkpoints must come back from the store, not the executor's memory
        dev.kill()
        dev.start()
    gate.touch()
    workers("survivor")
    run = finished(dev, event_id)
    assert run["status"] == "Completed", (run, dev.proc.output()[-3000:] if dev.proc else "")
    assert run["output"] == OUTPUT
    assert starts_per_step(tmp_path, run_id) == {1: 1, 2: 1, 3: 2, 4: 1, 5: 1}
    assert [row["worker"] for row in rows(tmp_path, run_id, "start")] == ["victim"] * 3 + ["survivor"] * 3


def test_cancel_during_a_step_stops_the_run_after_it(dev: DevServer, workers: StartWorker, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    workers("w")
    event_id, run_id = send(dev, step=2, gate=str(gate))
    wait_until(lambda: 2 in starts_per_step(tmp_path, run_id), 60, "step 2 to start")
    resp = httpx.post(f"{dev.url}/v1/runs/{run_id}/cancel", timeout=60)
    assert resp.status_code == 202, resp.text  # step 2 is still running
    gate.touch()
    run = finished(dev, event_id)
    assert run["status"] == "Cancelled", run
    assert [row["step"] for row in rows(tmp_path, run_id, "end")] == [1, 2]  # step 2's body was not interrupted
    assert starts_per_step(tmp_path, run_id) == {1: 1, 2: 1}


def test_cancel_during_the_last_step_cancels_the_run(dev: DevServer, workers: StartWorker, tmp_path: Path) -> None:
    """The handler returns right after step 5, so its reply leaves right
    behind step 5's checkpoint, before the answer. The checkpoint is refused
    (a cancellation was asked for), and the reply behind it counts as that
    step: the run ends Cancelled, not Completed."""
    gate = tmp_path / "gate"
    workers("w")
    event_id, run_id = send(dev, step=5, gate=str(gate))
    wait_until(lambda: 5 in starts_per_step(tmp_path, run_id), 60, "step 5 to start")
    resp = httpx.post(f"{dev.url}/v1/runs/{run_id}/cancel", timeout=60)
    assert resp.status_code == 202, resp.text
    gate.touch()
    run = finished(dev, event_id)
    assert run["status"] == "Cancelled", run
    assert starts_per_step(tmp_path, run_id) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}


def test_a_step_retried_after_a_checkpoint(dev: DevServer, workers: StartWorker, tmp_path: Path) -> None:
    worker = workers("w")
    event_id, run_id = send(dev, step=2, fail_once=str(tmp_path / "failed-once"))
    run = finished(dev, event_id)
    assert run["status"] == "Completed", (run, worker.output()[-3000:])
    assert run["output"] == OUTPUT
    assert starts_per_step(tmp_path, run_id) == {1: 1, 2: 2, 3: 1, 4: 1, 5: 1}
    one, two, two_again = rows(tmp_path, run_id, "start")[:3]
    assert one["request"] == two["request"] != two_again["request"]  # step 1 was a checkpoint
    assert [two["attempt"], two_again["attempt"]] == [0, 1]


def test_ctx_attempt_starts_over_for_the_step_after_a_retried_one(
    dev: DevServer, workers: StartWorker, tmp_path: Path
) -> None:
    """Context.attempt "resets after each completed step", in a request that
    goes on after a checkpoint too."""
    workers("w")
    event_id, run_id = send(dev, step=2, fail_once=str(tmp_path / "failed-once"))
    assert finished(dev, event_id)["status"] == "Completed"
    attempts = {row["step"]: row["attempt"] for row in rows(tmp_path, run_id, "end")}
    assert attempts == {1: 0, 2: 1, 3: 0, 4: 0, 5: 0}


def test_sigterm_mid_run_hands_the_next_steps_to_another_worker(
    dev: DevServer, workers: StartWorker, tmp_path: Path
) -> None:
    """A draining worker finishes its step but does not go on to the next one."""
    gate = tmp_path / "gate"
    leaving = workers("leaving")
    event_id, run_id = send(dev, step=2, gate=str(gate))
    wait_until(lambda: 2 in starts_per_step(tmp_path, run_id), 60, "step 2 to start")
    workers("staying")
    leaving.signal(signal.SIGTERM)
    wait_for_log(leaving, "worker state CLOSING")
    gate.touch()
    assert leaving.wait(30) == 0
    run = finished(dev, event_id)
    assert run["status"] == "Completed" and run["output"] == OUTPUT, run
    assert starts_per_step(tmp_path, run_id) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    assert [row["worker"] for row in rows(tmp_path, run_id, "start")] == ["leaving"] * 2 + ["staying"] * 3
