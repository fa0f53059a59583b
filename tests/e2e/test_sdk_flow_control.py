"""Flow control written with our SDK (`tests/e2e/flow_app.py`): a real worker
process served by a real `connect dev`, on SQLite and on PostgreSQL (one
server per engine for the module). Throttle, rate limit, idempotency,
singleton (both modes), debounce and batch each do what the README's Flow
control section says; timings are asserted as margins. (Concurrency and
priority with our SDK: `tests/e2e/test_concurrency.py`.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import DevServer, Proc, start_worker, wait_for_log, wait_until
from tests.postgres import PostgresServer

APP = "sdk-flow"


class Stack:
    def __init__(self, tmp: Path, database_url: str | None) -> None:
        self.dev = DevServer(tmp, database_url=database_url).start()
        self.worker: Proc = start_worker(self.dev, tmp, target="tests.e2e.flow_app:client")
        wait_for_log(self.worker, "worker state ACTIVE", timeout=60)

    def send(self, name: str, datas: list[dict[str, Any]]) -> list[str]:
        return self.dev.send([{"name": name, "data": data} for data in datas])

    def hint(self) -> str:
        return self.worker.output()[-3000:]

    def stop(self) -> None:
        self.worker.stop()
        self.dev.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    database_url = None
    if request.param == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        database_url = server.create_database()
    running = Stack(tmp_path_factory.mktemp(f"sdk-flow-{request.param}"), database_url)
    yield running
    running.stop()


def started_ms(run: dict[str, Any]) -> float:
    return datetime.fromisoformat(run["run_started_at"].replace("Z", "+00:00")).timestamp() * 1000


def test_our_sdks_functions_are_served_with_their_flow_control(stack: Stack) -> None:
    assert stack.dev.proc is not None
    log = stack.dev.proc.output()
    assert "refused" not in log and "does not honour" not in log, log[-3000:]


def test_a_throttle_starts_runs_one_period_apart(stack: Stack) -> None:
    sent = time.time()
    runs = stack.dev.wait_runs(stack.send("flow/throttled", [{}, {}, {}]), timeout=60)
    assert [r["status"] for r in runs] == ["Completed"] * 3, stack.hint()
    at = sorted(r["output"] for r in runs)
    assert at[1] - sent >= 1.99 and at[2] - sent >= 3.99, at
    assert at[1] - at[0] >= 1.5 and at[2] - at[1] >= 1.5, at


def test_a_throttled_run_of_priority_600_queued_after_two_of_priority_0_starts_before_them(stack: Stack) -> None:
    first, low_a, low_b = stack.send("flow/throttled-priority", [{"p": 0}, {"p": 0}, {"p": 0}])
    [vip] = stack.send("flow/throttled-priority", [{"p": 600}])
    runs = stack.dev.wait_runs([first, low_a, low_b, vip], timeout=60)
    assert [r["status"] for r in runs] == ["Completed"] * 4, stack.hint()
    at = {name: r["output"] for name, r in zip(("first", "low_a", "low_b", "vip"), runs, strict=True)}
    assert at["first"] < at["vip"] < at["low_a"] < at["low_b"], at
    assert at["vip"] - at["first"] >= 1.5 and at["low_a"] - at["vip"] >= 1.5 and at["low_b"] - at["low_a"] >= 1.5, at


def test_a_rate_limit_skips_the_events_over_it_per_key(stack: Stack) -> None:
    limited = stack.send("flow/rated", [{"k": "a", "n": n} for n in range(4)])
    [other] = stack.send("flow/rated", [{"k": "b", "n": 9}])
    runs = stack.dev.wait_runs([*limited, other], timeout=60)
    assert [r["status"] for r in runs] == ["Completed", "Completed", "Skipped", "Skipped", "Completed"], stack.hint()
    assert [r["output"] for r in runs if r["status"] == "Completed"] == [0, 1, 9]
    assert all(r["skip_reason"].startswith("rate limit 2 per 60s: key 'a'") for r in runs[2:4])


def test_idempotency_starts_one_run_per_key(stack: Stack) -> None:
    events = stack.send("flow/idempotent", [{"order": "o-1"}, {"order": "o-1"}, {"order": "o-2"}])
    runs = stack.dev.wait_runs(events, timeout=60)
    assert [(r["status"], r["output"]) for r in runs] == [("Completed", "o-1"), ("Skipped", None), ("Completed", "o-2")]
    assert runs[1]["skip_reason"].startswith("idempotency: key 'o-1'")
    # The key holds after its run ended, too (24 hours).
    [again] = stack.dev.wait_runs(stack.send("flow/idempotent", [{"order": "o-1"}]), timeout=60)
    assert again["status"] == "Skipped", again


def test_a_singleton_skips_an_event_while_its_key_runs(stack: Stack) -> None:
    [first] = stack.send("flow/single", [{"k": "a", "sleep": 2, "n": 1}])
    wait_until(lambda: bool(stack.dev.runs(first)), 10, "the first run")
    [skipped, other] = stack.send("flow/single", [{"k": "a", "n": 2}, {"k": "b", "n": 3}])
    runs = stack.dev.wait_runs([first, skipped, other], timeout=60)
    assert [(r["status"], r["output"]) for r in runs] == [("Completed", 1), ("Skipped", None), ("Completed", 3)]
    assert runs[1]["skip_reason"].startswith("singleton")
    # Once the run ended, the key starts runs again.
    [again] = stack.dev.wait_runs(stack.send("flow/single", [{"k": "a", "n": 4}]), timeout=60)
    assert (again["status"], again["output"]) == ("Completed", 4)


def test_a_debounce_starts_one_run_with_the_last_event_per_key(stack: Stack) -> None:
    ids = []
    for n in range(3):
        last_sent = time.time() * 1000
        ids.append(stack.send("flow/debounce", [{"user": "u1", "n": n}])[0])
        time.sleep(0.3)
    [other] = stack.send("flow/debounce", [{"user": "u2", "n": 9}])
    [run] = stack.dev.wait_runs([ids[-1]], timeout=60)
    assert run["status"] == "Completed", stack.hint()
    assert run["output"]["event"] == {"user": "u1", "n": 2}
    assert run["output"]["events"] == [{"user": "u1", "n": 2}]
    assert started_ms(run) >= last_sent + 2000 - 1  # the period after the last event (ms rounding)
    assert all(stack.dev.runs(event_id) == [] for event_id in ids[:-1])
    [alone] = stack.dev.wait_runs([other], timeout=60)
    assert alone["output"]["event"] == {"user": "u2", "n": 9}


def test_a_batch_runs_once_full_or_once_its_timeout_passed(stack: Stack) -> None:
    full = stack.send("flow/batch", [{"team": "a", "n": n} for n in range(3)])
    opened = time.time() * 1000
    partial = stack.send("flow/batch", [{"team": "b", "n": n} for n in range(2)])
    [run] = stack.dev.wait_runs([full[0]], timeout=60)
    assert run["status"] == "Completed", stack.hint()
    assert run["output"]["event"] == {"team": "a", "n": 0}
    assert run["output"]["events"] == [{"team": "a", "n": n} for n in range(3)]
    [late] = stack.dev.wait_runs([partial[0]], timeout=60)
    assert [e["n"] for e in late["output"]["events"]] == [0, 1]
    assert started_ms(late) >= opened + 2000 - 1  # its timeout after it opened (ms rounding)
    assert started_ms(run) < started_ms(late)  # a full batch does not wait for its timeout
    # Every event of a batch lists the batch's run.
    assert all([r["run_id"] for r in stack.dev.runs(event_id)] == [run["run_id"]] for event_id in full[1:])
    assert all([r["run_id"] for r in stack.dev.runs(event_id)] == [late["run_id"]] for event_id in partial[1:])


def test_a_debounce_holds_the_events_of_a_function_that_also_throttles(stack: Stack) -> None:
    ids = stack.send("flow/debounce-throttle", [{"n": n} for n in range(3)])
    [run] = stack.dev.wait_runs([ids[-1]], timeout=60)
    assert run["status"] == "Completed", stack.hint()
    assert run["output"]["events"] == [{"n": 2}]
    assert all(stack.dev.runs(event_id) == [] for event_id in ids[:-1])
    # The debounced run is throttled: the next one (1 s of debounce later) waits for
    # the throttle's turn, 4 s after the first run's start.
    [later] = stack.dev.wait_runs(stack.send("flow/debounce-throttle", [{"n": 3}]), timeout=60)
    assert later["status"] == "Completed", stack.hint()
    assert later["output"]["at"] - run["output"]["at"] >= 3.0, (run, later)


def test_a_debounced_event_over_the_rate_limit_is_skipped_and_joins_nothing(stack: Stack) -> None:
    first, over = stack.send("flow/debounce-rate", [{"user": "u1", "n": 1}, {"user": "u1", "n": 2}])
    runs = stack.dev.wait_runs([first, over], timeout=60)
    assert [r["status"] for r in runs] == ["Completed", "Skipped"], stack.hint()
    # The run has the event the rate limit let in; the one over it never joined the debounce.
    assert runs[0]["output"]["event"] == {"user": "u1", "n": 1}
    assert runs[1]["skip_reason"].startswith("rate limit 1 per 60s: key 'u1'"), runs[1]


def test_a_debounced_run_is_skipped_while_a_singleton_run_is_running(stack: Stack) -> None:
    [holder] = stack.send("flow/debounce-single", [{"sleep": 6, "n": 1}])
    wait_until(lambda: bool(stack.dev.runs(holder)), 20, "the debounced run holding the singleton")
    [skipped] = stack.send("flow/debounce-single", [{"n": 2}])
    runs = stack.dev.wait_runs([holder, skipped], timeout=60)
    assert [r["status"] for r in runs] == ["Completed", "Skipped"], stack.hint()
    assert runs[1]["skip_reason"].startswith("singleton: run "), runs[1]


def test_the_runs_of_batches_are_throttled(stack: Stack) -> None:
    ids = stack.send("flow/batch-throttle", [{"n": n} for n in range(4)])
    runs = stack.dev.wait_runs([ids[0], ids[2]], timeout=60)
    assert [r["status"] for r in runs] == ["Completed", "Completed"], stack.hint()
    assert [[e["n"] for e in r["output"]["events"]] for r in runs] == [[0, 1], [2, 3]]
    assert runs[1]["output"]["at"] - runs[0]["output"]["at"] >= 3.0, runs


def test_a_singleton_in_cancel_mode_cancels_the_running_run(stack: Stack) -> None:
    [first] = stack.send("flow/single-cancel", [{"sleep": 60, "n": 1}])
    wait_until(lambda: bool(stack.dev.runs(first)), 10, "the first run")
    [second] = stack.send("flow/single-cancel", [{"n": 2}])
    runs = stack.dev.wait_runs([first, second], timeout=30)
    assert [(r["status"], r["output"]) for r in runs] == [("Cancelled", None), ("Completed", 2)], stack.hint()


def test_an_invoke_whose_run_is_skipped_fails_at_once_naming_why(stack: Stack) -> None:
    [holder] = stack.send("flow/single", [{"k": "inv", "nap": 60, "n": 1}])
    wait_until(lambda: bool(stack.dev.runs(holder)), 10, "the run holding the singleton key")
    calls = [
        {"fn": "single", "data": {"k": "inv", "n": 2}},  # while `holder` runs
        *({"fn": "rated", "data": {"k": "inv", "n": n}} for n in range(3)),  # 2 per minute
        *({"fn": "idempotent", "data": {"order": "inv"}} for _ in range(2)),
    ]
    sent = time.monotonic()
    [run] = stack.dev.wait_runs(stack.send("flow/invoke", [{"calls": calls}]), timeout=120)
    elapsed = time.monotonic() - sent
    assert run["status"] == "Completed", stack.hint()
    out = run["output"]
    assert [o == "ran" for o in out] == [False, True, True, False, True, False], out
    prefix = "FunctionSkippedError: the invoked function 'sdk-flow-{}' started no run: "
    assert out[0].startswith(prefix.format("single") + "singleton: run "), out[0]
    assert out[3].startswith(prefix.format("rated") + "rate limit 2 per 60s: key 'inv'"), out[3]
    assert out[5].startswith(prefix.format("idempotent") + "idempotency: key 'inv'"), out[5]
    # Told when the run was refused, not when the invoke's 5 minutes ran out.
    assert elapsed < 60, elapsed
