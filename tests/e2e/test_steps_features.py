"""Every step kind and function option, end to end: real `connect dev`, real worker processes.

Each scenario runs against a worker built with our SDK (here), one built with the
official Python SDK (`tests/compat/test_official_steps.py`) and one built with the
official TypeScript SDK, checkpointing on and off (`tests/compat/test_ts_steps.py`):
those modules import these tests and swap the `stack` fixture. All serve the same
functions (`tests/e2e/steps_app.py`, `tests/compat/official_steps_app.py`,
`tests/compat/ts/steps_app.mjs`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.compat import npm
from tests.e2e.harness import DevServer, Proc, complete_lines, start_worker, wait_for_log, wait_until

#: The worker's max_worker_concurrency: small, so a sleeping run that held a
#: slot would visibly block others.
CONCURRENCY = 4


@dataclass
class Stack:
    """A dev server and one worker serving the step test functions."""

    sdk: str
    app: str
    other: str
    dev: DevServer
    worker: Proc
    tmp: Path

    @property
    def log_path(self) -> Path:
        return self.tmp / "steps.jsonl"

    def lines(self, kind: str) -> list[dict[str, Any]]:
        rows = [json.loads(line) for line in complete_lines(self.log_path)]
        return [row for row in rows if row["kind"] == kind]

    def fn(self, local_id: str) -> str:
        return f"{self.app}-{local_id}"

    def send(self, name: str, data: dict[str, Any] | None = None) -> str:
        [event_id] = self.dev.send([{"name": name, "data": data or {}}])
        return event_id

    def run_of(self, event_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """The one finished run an event started."""
        [run] = self.dev.wait_runs([event_id], timeout=timeout)
        return run

    def runs_now(self, event_id: str) -> list[dict[str, Any]]:
        return self.dev.runs(event_id)

    def output_hint(self) -> str:
        return self.worker.output()[-3000:]


#: The workers a stack can run: our SDK, the official Python SDK, and the official
#: TypeScript SDK with its defaults (checkpointing on) and with `checkpointing: false`.
SDKS = ("ours", "official", "ts", "ts-nocheckpoint")
#: (app, other app) each SDK's worker serves.
APPS = {
    "ours": ("steps-app", "steps-other"),
    "official": ("official-steps", "official-other"),
    "ts": ("ts-steps", "ts-other"),
    "ts-nocheckpoint": ("ts-steps", "ts-other"),
}
TS_APP = Path(__file__).resolve().parents[1] / "compat" / "ts" / "steps_app.mjs"


def ready_workers(dev: DevServer) -> int:
    """How many workers have become ready on the running `connect dev` so far."""
    assert dev.proc is not None
    return dev.proc.output().count("worker ready: connection=")


def start_sdk_worker(
    dev: DevServer,
    tmp: Path,
    sdk: str,
    *,
    target: str = "main",
    concurrency: int | None = CONCURRENCY,
    name: str = "",
    env: dict[str, str] | None = None,
) -> Proc:
    """One worker of `sdk` serving the step test functions, once `connect dev` has it ready.

    `env` adds to the worker's environment (`TS_APP_PREFIX` gives a TypeScript worker
    app ids of its own, so both TypeScript variants can share one `connect dev`)."""
    name = name or f"{sdk}-{target}"
    env = {"STEPS_LOG": str(tmp / "steps.jsonl"), **(env or {})}
    before = ready_workers(dev)
    if sdk == "ours":
        attr = "apps" if target == "main" else "cron_apps"
        worker = start_worker(
            dev,
            tmp,
            name=name,
            target=f"tests.e2e.steps_app:{attr}",
            instance_id=name,
            max_concurrency=concurrency,
            env=env,
        )
        wait_for_log(worker, "worker state ACTIVE", timeout=60)
        return worker
    full_env = dict(os.environ, CONNECT_API_URL=dev.url, WORKER_NAME=name, **env)
    if concurrency is not None:
        full_env["INNGEST_CONNECT_MAX_WORKER_CONCURRENCY"] = str(concurrency)
    if sdk == "official":
        worker = Proc([sys.executable, "tests/compat/official_steps_app.py", target], full_env, tmp / f"{name}.log")
    elif sdk in ("ts", "ts-nocheckpoint"):
        full_env["SDK_NAME"] = sdk
        if sdk == "ts-nocheckpoint":
            full_env["TS_CHECKPOINTING"] = "off"
        script = npm.prepare_script(TS_APP, tmp / "ts")
        worker = Proc(["node", str(script), target], npm.node_env(full_env), tmp / f"{name}.log")
    else:
        raise ValueError(f"unknown SDK {sdk!r}: one of {SDKS}")
    wait_until(
        lambda: ready_workers(dev) > before or worker.popen.poll() is not None, 60, f"the {sdk} worker to be ready"
    )
    assert worker.popen.poll() is None, f"the {sdk} worker exited:\n{worker.output()[-3000:]}"
    return worker


def start_stack(tmp: Path, sdk: str, *, target: str = "main", concurrency: int | None = CONCURRENCY) -> Stack:
    dev = DevServer(tmp).start()
    worker = start_sdk_worker(dev, tmp, sdk, target=target, concurrency=concurrency)
    app, other = APPS[sdk]
    return Stack(sdk, app, other, dev, worker, tmp)


def running_stack(tmp_path_factory: pytest.TempPathFactory, prefix: str, sdk: str) -> Iterator[Stack]:
    """A stack for one module's scenarios (the body of their `stack` fixtures)."""
    running = start_stack(tmp_path_factory.mktemp(f"{prefix}-{sdk}"), sdk)
    yield running
    running.worker.stop()
    running.dev.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from running_stack(tmp_path_factory, "steps", "ours")


# --- sleeps -----------------------------------------------------------------------------------


def test_sleep_forms_wake_on_time_and_hold_no_worker(stack: Stack) -> None:
    nap = 4
    sleeps = [stack.send("steps/sleep", {"mode": mode, "seconds": nap}) for mode in ("until", "ms", "timedelta")]
    sleeps += [stack.send("steps/sleep", {"mode": "until", "seconds": nap}) for _ in range(CONCURRENCY)]
    time.sleep(0.5)
    # More runs than the worker has slots are asleep; quick runs still get through, before any
    # sleeper wakes.
    quick = [stack.send("steps/quick") for _ in range(CONCURRENCY * 2)]
    for run in stack.dev.wait_runs(quick, timeout=30):
        assert run["status"] == "Completed" and run["output"] == "quick done"
    assert all(r["status"] == "Running" for eid in sleeps for r in stack.runs_now(eid)), (
        "quick runs waited for sleeping ones"
    )
    runs = stack.dev.wait_runs(sleeps, timeout=30)
    for run in runs:
        assert run["status"] == "Completed", (run, stack.output_hint())
        assert run["output"]["late"] >= -0.01
    until = [r["output"]["late"] for r in runs if r["output"]["mode"] == "until"]
    print(f"\n{stack.sdk}: sleep_until lateness: {', '.join(f'{v * 1000:.0f} ms' for v in until)}")
    # A sleep wakes on time: within half a second of it (worker clock, step to step), with
    # the margin a machine running other tests needs; unloaded it is within 100 ms.
    assert all(r["output"]["late"] < 0.5 for r in runs), [r["output"] for r in runs]


def test_a_sleep_survives_a_restart_of_connect_dev(stack: Stack) -> None:
    event_id = stack.send("steps/sleep", {"mode": "until", "seconds": 4})
    wait_until(lambda: bool(stack.runs_now(event_id)), 10, "the sleeping run")
    time.sleep(1.0)
    stack.dev.stop()
    time.sleep(0.5)
    stack.dev.start()
    run = stack.run_of(event_id, timeout=60)
    assert run["status"] == "Completed", (run, stack.output_hint())
    # It woke no earlier than asked; how much later depends on how fast the worker reconnected.
    assert 0 <= run["output"]["late"] < 15
    wait_for_log(stack.dev.proc, "worker ready", timeout=60)  # type: ignore[arg-type]


# --- waits ---------------------------------------------------------------------------------------


def _reached(stack: Stack, run_ids: set[str]) -> bool:
    return run_ids <= {line["run"] for line in stack.lines("reached-wait")}


def test_wait_for_event_match_condition_and_timeout(stack: Stack) -> None:
    events = {key: stack.send("steps/wait", {"id": key, "timeout": 60}) for key in ("a", "b")}
    events["c"] = stack.send("steps/wait", {"id": "c", "timeout": 2})
    runs = {key: stack.runs_now(eid)[0]["run_id"] for key, eid in events.items()}
    wait_until(lambda: _reached(stack, set(runs.values())), 30, "the waits")
    time.sleep(0.5)
    stack.send("billing/paid", {"id": "nobody"})
    stack.send("billing/refunded", {"id": "b"})
    paid_b = stack.send("billing/paid", {"id": "b", "amount": 7})
    run_b = stack.run_of(events["b"])
    assert run_b["output"] == {"id": "b", "got": {"id": paid_b, "data": {"id": "b", "amount": 7}}}
    run_c = stack.run_of(events["c"], timeout=30)
    assert run_c["output"] == {"id": "c", "got": None}  # timed out
    assert stack.runs_now(events["a"])[0]["status"] == "Running"
    paid_a = stack.send("billing/paid", {"id": "a"})
    assert stack.run_of(events["a"])["output"]["got"]["id"] == paid_a


# --- send_event ---------------------------------------------------------------------------------


def test_send_event_returns_ids_and_sends_once(stack: Stack) -> None:
    tag = f"t{time.monotonic_ns()}"
    run = stack.run_of(stack.send("steps/emit", {"tag": tag}))
    assert run["status"] == "Completed", (run, stack.output_hint())
    ids = run["output"]["ids"]
    assert len(ids) == 2 and run["output"]["after"] == "after sending"
    listeners = [r for eid in ids for r in stack.dev.wait_runs([eid], timeout=30)]
    assert [r["function_id"] for r in listeners] == [stack.fn("emitted-listener")] * 2
    assert sorted(r["output"]["n"] for r in listeners) == [0, 1]
    time.sleep(0.3)
    emitted = [line for line in stack.lines("emitted") if line["tag"] == tag]
    assert sorted(line["event"] for line in emitted) == sorted(ids)
    # The timeline: a send is its own kind where the SDK marks it (ours and TypeScript's
    # `opts.type`; the official Python SDK's is a plain step.run on the wire), and every
    # step has its start and attempts, also those run after a checkpoint in one request.
    steps = httpx.get(f"{stack.dev.url}/v1/runs/{run['run_id']}/steps", timeout=30).json()["data"]
    assert [(s["name"], s["kind"]) for s in steps] == [
        ("announce", "run" if stack.sdk == "official" else "send_event"),
        ("after", "run"),
    ]
    assert all(s["attempts"] == 1 and s["started_at"] <= s["ended_at"] for s in steps), steps


# --- invoke -------------------------------------------------------------------------------------------


def test_invoke_in_the_same_app_another_app_and_a_failing_one(stack: Stack) -> None:
    run = stack.run_of(stack.send("steps/invoke"))
    assert run["status"] == "Completed", (run, stack.output_hint())
    assert run["output"] == {
        "same": {"n": 40, "parent": stack.fn("invoker")},
        "across": "other app got 5",
        "failure": "child says no",
    }


# --- parallel ---------------------------------------------------------------------------------------


@pytest.mark.serial  # a latency figure: run alone (see the Makefile)
def test_parallel_steps_run_concurrently_and_are_memoized_each(stack: Stack) -> None:
    started = time.monotonic()
    run = stack.run_of(stack.send("steps/parallel"))
    elapsed = time.monotonic() - started
    assert run["status"] == "Completed", (run, stack.output_hint())
    assert run["output"] == {"squares": [0, 1, 4, 9], "total": 14}
    mine = run["run_id"]
    starts = [line for line in stack.lines("branch-start") if line["run"] == mine]
    ends = [line for line in stack.lines("branch-end") if line["run"] == mine]
    assert sorted(line["branch"] for line in starts) == [0, 1, 2, 3]  # each branch ran once
    assert max(line["at"] for line in starts) < min(line["at"] for line in ends)  # all at the same time
    assert elapsed < 3.5  # four one-second steps


# --- errors -----------------------------------------------------------------------------------------


def test_a_step_that_keeps_failing_raises_step_error_or_fails_the_run(stack: Stack) -> None:
    caught = stack.send("steps/compensate")
    failed = stack.send("steps/uncaught")
    run = stack.run_of(caught)
    assert run["status"] == "Completed", (run, stack.output_hint())
    assert run["output"] == {
        "compensated": "the card service is down",
        "error_name": "RuntimeError",
        "refund": "refunded",
    }
    mine = [line for line in stack.lines("attempt") if line["run"] == run["run_id"]]
    assert [line["attempt"] for line in mine] == [0, 1]  # retries=1: two attempts, then StepError
    run = stack.run_of(failed)
    assert run["status"] == "Failed"
    assert run["output"]["message"] == "the boom service is down"


# --- triggers and system events --------------------------------------------------------------------------


def test_several_triggers_with_an_expression_and_the_finished_event(stack: Stack) -> None:
    a = stack.send("steps/multi.a")
    small = stack.send("steps/multi.b", {"amount": 5})
    big = stack.send("steps/multi.b", {"amount": 50})
    runs = stack.dev.wait_runs([a, big], timeout=30)
    assert [r["output"] for r in runs] == ["steps/multi.a", "steps/multi.b"]
    assert stack.runs_now(small) == []
    wait_until(
        lambda: {r["run_id"] for r in runs} <= {line["finished_run"] for line in stack.lines("finished")},
        30,
        "inngest/function.finished for both runs",
    )
    results = {line["finished_run"]: line["result"] for line in stack.lines("finished")}
    assert results[runs[0]["run_id"]] == "steps/multi.a"


def test_on_failure_runs_with_the_failed_runs_error_and_event(stack: Stack) -> None:
    run = stack.run_of(stack.send("steps/fail", {"order": 17}))
    assert run["status"] == "Failed"
    # `inngest/function.failed` has the failed run's id as its event id.
    [handler] = stack.dev.wait_runs([run["run_id"]], timeout=30)
    assert handler["function_id"] == stack.fn("fails-failure")
    assert handler["status"] == "Completed", (handler, stack.output_hint())
    assert handler["output"] == {
        "error": "this function fails on purpose",
        "original": {"order": 17},
        "function_id": stack.fn("fails"),
    }


# --- cancellation and timeouts ------------------------------------------------------------------------------


def test_cancel_by_event_and_through_the_api(stack: Stack) -> None:
    by_event = stack.send("steps/cancellable", {"id": 1})
    by_api = stack.send("steps/cancellable", {"id": 2})
    untouched = stack.send("steps/cancellable", {"id": 3})
    time.sleep(1.5)  # all three are asleep after their first step
    stack.send("steps/cancel", {"id": 1})
    assert stack.run_of(by_event, timeout=20)["status"] == "Cancelled"
    run_id = stack.runs_now(by_api)[0]["run_id"]
    resp = httpx.post(f"{stack.dev.url}/v1/runs/{run_id}/cancel", timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["data"]["status"] == "Cancelled"
    assert stack.runs_now(untouched)[0]["status"] == "Running"
    assert httpx.post(f"{stack.dev.url}/v1/runs/01J00000000000000000000000/cancel").status_code == 404
    done = stack.run_of(stack.send("steps/quick"))
    assert httpx.post(f"{stack.dev.url}/v1/runs/{done['run_id']}/cancel").status_code == 409
    cancelled = {stack.runs_now(e)[0]["run_id"] for e in (by_event, by_api)}
    wait_until(
        lambda: cancelled <= {line["cancelled_run"] for line in stack.lines("cancelled")},
        30,
        "inngest/function.cancelled for both runs",
    )
    time.sleep(0.3)
    assert not [line for line in stack.lines("after-cancel-point") if line["run"] in cancelled]
    httpx.post(f"{stack.dev.url}/v1/runs/{stack.runs_now(untouched)[0]['run_id']}/cancel", timeout=30)


def test_timeouts_finish_cancels_a_run_that_takes_too_long(stack: Stack) -> None:
    started = time.monotonic()
    run = stack.run_of(stack.send("steps/bounded"), timeout=30)
    assert run["status"] == "Cancelled"
    assert 1.5 < time.monotonic() - started < 10
