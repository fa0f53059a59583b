"""The compatibility matrix's rows that `test_steps_features.py` does not cover, run
against every worker: our SDK, the official Python SDK and the official TypeScript
SDK with its defaults (checkpointing on) and with `checkpointing: false`.

One `connect dev` and one worker per SDK for the whole module. The runs of the
independent rows are started together (`started`) and each row's test awaits its
own. The apps: `steps_app.py`, `tests/compat/official_steps_app.py`,
`tests/compat/ts/steps_app.mjs`.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import wait_until
from tests.e2e.test_steps_features import CONCURRENCY, SDKS, Stack, running_stack, start_sdk_worker

#: The 1 MB output row's step returns "0123456789" this many times.
TENS = 100_000


@pytest.fixture(scope="module", params=SDKS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from running_stack(tmp_path_factory, "matrix", request.param)


def _lines(stack: Stack, kind: str, run_id: str, **match: Any) -> list[dict[str, Any]]:
    return [
        line
        for line in stack.lines(kind)
        if line["run"] == run_id and all(line.get(key) == value for key, value in match.items())
    ]


# --- maxWorkerConcurrency (alone: the other rows' runs would take slots) ------------------------


def test_max_worker_concurrency_is_never_exceeded_and_is_used(stack: Stack) -> None:
    events = [stack.send("steps/hold") for _ in range(CONCURRENCY * 2)]
    runs = stack.dev.wait_runs(events, timeout=90)
    assert all(run["status"] == "Completed" and run["output"] == "held" for run in runs), (runs, stack.output_hint())
    mine = {run["run_id"] for run in runs}
    starts = [line for line in stack.lines("hold-start") if line["run"] in mine]
    ends = [line for line in stack.lines("hold-end") if line["run"] in mine]
    assert sorted(line["run"] for line in starts) == sorted(mine)  # each step body ran once
    # Each body is inside its request's slot, so bodies overlapping never outnumber the slots.
    # At equal times an end comes first: a slot freed and taken again in the same instant.
    moments = sorted([(line["at"], 1) for line in starts] + [(line["at"], -1) for line in ends])
    running = peak = 0
    for _, delta in moments:
        running += delta
        peak = max(peak, running)
    assert peak == CONCURRENCY, f"{peak} step bodies ran at once; the worker's limit is {CONCURRENCY}"


# --- the independent rows, started together -----------------------------------------------------


@pytest.fixture(scope="module")
def started(stack: Stack) -> dict[str, str]:
    """Row name -> the event that started its run."""
    return {
        "multi-step": stack.send("steps/multi-step", {"x": 4}),
        "flaky": stack.send("steps/flaky"),
        "non-retriable": stack.send("steps/non-retriable", {"order": 1}),
        "exhausted": stack.send("steps/exhausted", {"order": 2}),
        "fn-error": stack.send("steps/fn-error", {"order": 3}),
        "invoke-timeout": stack.send("steps/invoke-timeout"),
        "big-output": stack.send("steps/big-output", {"tens": TENS}),
    }


def test_multi_step_runs_each_step_once_and_passes_results_on(stack: Stack, started: dict[str, str]) -> None:
    run = stack.run_of(started["multi-step"], timeout=90)
    assert run["status"] == "Completed", (run, stack.output_hint())
    assert run["output"] == {"one": 5, "two": 10, "three": "5-10"}
    assert sorted(line["step"] for line in _lines(stack, "body", run["run_id"])) == ["one", "three", "two"]


def test_retries_then_success_completes_with_the_later_value(stack: Stack, started: dict[str, str]) -> None:
    run = stack.run_of(started["flaky"], timeout=90)
    assert run["status"] == "Completed", (run, stack.output_hint())
    assert run["output"] == {"value": "ok on attempt 2"}
    assert [line["attempt"] for line in _lines(stack, "attempt", run["run_id"], what="flaky")] == [0, 1, 2]


def _assert_failed(stack: Stack, event_id: str, fn: str, message: str, data: dict[str, Any]) -> dict[str, Any]:
    """The run ended `Failed` with `message`; `inngest/function.failed` (its id is the run's id)
    started the function's onFailure handler, which got the error and the original event."""
    run = stack.run_of(event_id, timeout=90)
    assert run["status"] == "Failed", (run, stack.output_hint())
    assert run["output"]["message"] == message, run
    [handler] = stack.dev.wait_runs([run["run_id"]], timeout=60)
    assert handler["function_id"] == stack.fn(f"{fn}-failure")
    assert handler["status"] == "Completed", (handler, stack.output_hint())
    assert handler["output"] == {"error": message, "original": data, "function_id": stack.fn(fn)}
    return run


def test_a_non_retriable_error_fails_the_run_at_once(stack: Stack, started: dict[str, str]) -> None:
    fn, message = "non-retriable", "this step refuses to be retried"
    run = _assert_failed(stack, started[fn], fn, message, {"order": 1})
    assert [line["attempt"] for line in _lines(stack, "attempt", run["run_id"], what="refuse")] == [0]


def test_a_step_out_of_retries_fails_the_run(stack: Stack, started: dict[str, str]) -> None:
    fn, message = "exhausted", "the exhausted service is down"
    run = _assert_failed(stack, started[fn], fn, message, {"order": 2})
    attempts = _lines(stack, "attempt", run["run_id"], what="the exhausted service")
    assert [line["attempt"] for line in attempts] == [0, 1]


def test_an_error_in_the_function_body_is_retried_then_fails_the_run(stack: Stack, started: dict[str, str]) -> None:
    fn, message = "fn-error", "the handler itself failed"
    run = _assert_failed(stack, started[fn], fn, message, {"order": 3})
    assert [line["attempt"] for line in _lines(stack, "attempt", run["run_id"], what="handler")] == [0, 1]


def test_an_invoke_that_times_out_raises_at_the_call(stack: Stack, started: dict[str, str]) -> None:
    run = stack.run_of(started["invoke-timeout"], timeout=90)
    assert run["status"] == "Completed", (run, stack.output_hint())
    assert run["output"] == {"failure": "Timed out waiting for invoked function to complete"}


def test_a_1_mb_step_output_is_stored_and_returned(stack: Stack, started: dict[str, str]) -> None:
    run = stack.run_of(started["big-output"], timeout=90)
    assert run["status"] == "Completed", (str(run)[:2000], stack.output_hint())
    assert run["output"] == {"blob": "0123456789" * TENS}


# --- SIGTERM mid-step (last: it replaces the stack's worker) ---------------------------------------


def test_sigterm_mid_step_finishes_the_step_and_the_run_completes_elsewhere(stack: Stack) -> None:
    event_id = stack.send("steps/drained")
    wait_until(lambda: bool(stack.runs_now(event_id)), 30, "the run to start")
    run_id = stack.runs_now(event_id)[0]["run_id"]
    wait_until(lambda: bool(_lines(stack, "slow-start", run_id)), 30, "the slow step to start")
    old = stack.worker
    old.signal(signal.SIGTERM)
    stack.worker = start_sdk_worker(stack.dev, stack.tmp, stack.sdk, name=f"{stack.sdk}-replacement")
    # The signalled worker finishes its step, delivers the result and exits on its own.
    assert old.wait(60) == 0, old.output()[-3000:]
    old.stop()
    run = stack.run_of(event_id, timeout=90)
    assert run["status"] == "Completed", (run, stack.output_hint(), old.output()[-3000:])
    assert run["output"]["slow"] == old.pid  # the result the signalled worker delivered
    assert [line["pid"] for line in _lines(stack, "slow-start", run_id)] == [old.pid]  # nothing ran twice
    assert [line["pid"] for line in _lines(stack, "slow-end", run_id)] == [old.pid]
    assert len(_lines(stack, "after", run_id)) == 1
