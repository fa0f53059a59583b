"""Throttle, rate limit, idempotency and singleton registered by unmodified
official workers (`tests/compat/official_flow_app.py`, Python SDK, on SQLite
and PostgreSQL; `tests/compat/ts/flow_app.mjs`, TypeScript SDK) against a real
`connect dev`: each option's meaning, timings asserted with margins, and an
invoke whose run idempotency refuses failing at once in the invoking run."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.compat import npm
from tests.e2e.harness import DevServer, Proc, wait_for_log, wait_until

TS_APP = Path(__file__).resolve().parent / "ts" / "flow_app.mjs"
APPS = {"official": "official-flow", "ts": "ts-flow-start"}


@dataclass
class Stack:
    sdk: str
    dev: DevServer
    worker: Proc

    def fn(self, local_id: str) -> str:
        return f"{APPS[self.sdk]}-{local_id}"

    def send(self, name: str, datas: list[dict[str, Any]]) -> list[str]:
        return self.dev.send([{"name": name, "data": data} for data in datas])

    def hint(self) -> str:
        return self.worker.output()[-3000:]


@pytest.fixture(scope="module", params=["official-sqlite", "official-postgres", "ts-sqlite"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    sdk, engine = request.param.split("-")
    tmp = tmp_path_factory.mktemp(f"flow-{request.param}")
    url = request.getfixturevalue("postgres_server").create_database() if engine == "postgres" else None
    dev = DevServer(tmp, database_url=url).start()
    env = dict(os.environ, CONNECT_API_URL=dev.url, WORKER_NAME=f"{sdk}-flow")
    if sdk == "official":
        worker = Proc([sys.executable, "tests/compat/official_flow_app.py"], env, tmp / "worker.log")
    else:
        script = npm.prepare_script(TS_APP, tmp / "ts")
        worker = Proc(["node", str(script)], npm.node_env(env), tmp / "worker.log")
    try:
        assert dev.proc is not None
        wait_for_log(dev.proc, "worker ready: connection=", timeout=90)
        yield Stack(sdk, dev, worker)
    finally:
        worker.stop()
        dev.stop()


def test_throttle_starts_three_runs_at_least_two_seconds_apart(stack: Stack) -> None:
    sent = time.time()
    runs = stack.dev.wait_runs(stack.send("flow/throttled", [{}, {}, {}]), timeout=60)
    assert [r["status"] for r in runs] == ["Completed"] * 3, stack.hint()
    at = sorted(r["output"] for r in runs)
    # Each start is due 2 s after the one before, counted from when the events
    # were recorded (after `sent`); the first one's own dispatch takes a moment.
    assert at[0] - sent < 1.5, at
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


def test_throttle_burst_starts_one_more_at_once(stack: Stack) -> None:
    sent = time.time()
    runs = stack.dev.wait_runs(stack.send("flow/throttled-burst", [{}, {}, {}]), timeout=60)
    assert [r["status"] for r in runs] == ["Completed"] * 3, stack.hint()
    at = sorted(r["output"] for r in runs)
    assert at[1] - sent < 1.5, at
    assert at[2] - sent >= 1.99, at


def test_rate_limit_creates_two_runs_and_records_the_rest_as_skipped(stack: Stack) -> None:
    limited = stack.send("flow/rated", [{"k": "a", "n": n} for n in range(5)])
    other = stack.send("flow/rated", [{"k": "b", "n": 9}])
    runs = stack.dev.wait_runs(limited + other, timeout=60)
    assert [r["status"] for r in runs] == ["Completed"] * 2 + ["Skipped"] * 3 + ["Completed"], stack.hint()
    assert [r["output"] for r in runs if r["status"] == "Completed"] == [0, 1, 9]
    for run in runs[2:5]:
        assert run["function_id"] == stack.fn("rated")
        assert run["skip_reason"].startswith("rate limit 2 per 60s: key 'a'")
    assert stack.dev.proc is not None
    wait_until(lambda: f"event {limited[4]} started no run of function" in stack.dev.proc.output(), 10, "the log")


def test_idempotency_starts_one_run_per_key(stack: Stack) -> None:
    events = stack.send("flow/idempotent", [{"order": "o-1"}, {"order": "o-1"}, {"order": "o-2"}])
    runs = stack.dev.wait_runs(events, timeout=60)
    assert [(r["status"], r["output"]) for r in runs] == [("Completed", "o-1"), ("Skipped", None), ("Completed", "o-2")]
    assert runs[1]["skip_reason"].startswith("idempotency: key 'o-1'")


def test_an_invoke_of_a_run_idempotency_skips_fails_at_once_naming_why(stack: Stack) -> None:
    sent = time.monotonic()
    [run] = stack.dev.wait_runs(stack.send("flow/invoke", [{"order": "o-invoke"}]), timeout=120)
    assert run["status"] == "Completed", stack.hint()
    ran, skipped = run["output"]
    assert ran == "ran"
    assert skipped.startswith(
        f"FunctionSkippedError: the invoked function '{stack.fn('idempotent')}' started no run: "
        "idempotency: key 'o-invoke'"
    ), skipped
    assert time.monotonic() - sent < 60  # not the invoke's 5 minutes


def test_singleton_skip_while_a_run_is_running(stack: Stack) -> None:
    [first] = stack.send("flow/single-skip", [{"k": "a", "sleep": 2, "n": 1}])
    [skipped, other] = stack.send("flow/single-skip", [{"k": "a", "n": 2}, {"k": "b", "n": 3}])
    runs = stack.dev.wait_runs([first, skipped, other], timeout=60)
    assert [(r["status"], r["output"]) for r in runs] == [("Completed", 1), ("Skipped", None), ("Completed", 3)]
    assert runs[1]["skip_reason"].startswith("singleton")
    [again] = stack.dev.wait_runs(stack.send("flow/single-skip", [{"k": "a", "n": 4}]), timeout=60)
    assert (again["status"], again["output"]) == ("Completed", 4)


def test_singleton_cancel_cancels_the_running_run(stack: Stack) -> None:
    [first] = stack.send("flow/single-cancel", [{"sleep": 60, "n": 1}])
    wait_until(lambda: bool(stack.dev.runs(first)), 10, "the first run")
    [second] = stack.send("flow/single-cancel", [{"n": 2}])
    runs = stack.dev.wait_runs([first, second], timeout=30)
    assert [(r["status"], r["output"]) for r in runs] == [("Cancelled", None), ("Completed", 2)], stack.hint()
