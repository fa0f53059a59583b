"""A thousand sleeping runs and a thousand waiting runs through real processes.

* 1,000 runs each sleeping 1 s wake within 2 s of their time.
* 1,000 runs wait for `billing/paid` with `async.data.id == event.data.id`:
  1,000 unrelated events resume none of them, then 1,000 matching events
  resume each exactly the right run.

Progress is read from the worker's log file rather than by polling the API,
so the measurement does not load the server it measures. Each test prints
its numbers (run pytest with -s to see them).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import pytest

from tests.e2e.harness import wait_until
from tests.e2e.test_steps_features import Stack, start_stack

#: Its figures are latencies: run alone (see the Makefile).
pytestmark = pytest.mark.serial
RUNS = 1000


@pytest.fixture(scope="module", params=["ours", "official"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("steps-scale"), request.param, concurrency=None)
    yield running
    running.worker.stop()
    running.dev.stop()


def _send_in_batches(stack: Stack, events: list[dict[str, object]], size: int = 250) -> list[str]:
    ids: list[str] = []
    for start in range(0, len(events), size):
        ids.extend(stack.dev.send(events[start : start + size]))
    return ids


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_a_thousand_one_second_sleeps_wake_within_two_seconds(stack: Stack) -> None:
    started = time.monotonic()
    ids = _send_in_batches(stack, [{"name": "steps/sleep", "data": {"mode": "until", "seconds": 1}}] * RUNS)
    wait_until(lambda: len(stack.lines("woke")) >= RUNS, 120, f"{RUNS} runs to wake")
    elapsed = time.monotonic() - started
    late = {line["run"]: line["late"] for line in stack.lines("woke")}
    assert len(late) == RUNS
    values = list(late.values())
    print(
        f"\n{RUNS} sleeps of 1 s: lateness p50={statistics.median(values) * 1000:.0f} ms "
        f"p90={_percentile(values, 0.9) * 1000:.0f} ms p99={_percentile(values, 0.99) * 1000:.0f} ms "
        f"max={max(values) * 1000:.0f} ms; all woke {elapsed:.1f} s after the first send"
    )
    assert min(values) >= -0.01  # none woke early
    assert max(values) < 2.0
    # Every run then completed.
    runs = stack.dev.wait_runs(ids, timeout=60)
    assert all(run["status"] == "Completed" for run in runs)


def test_a_thousand_waits_resume_exactly_the_matching_runs(stack: Stack) -> None:
    tag = f"w{time.monotonic_ns()}"
    keys = [f"{tag}-{i}" for i in range(RUNS)]
    ids = _send_in_batches(stack, [{"name": "steps/wait", "data": {"id": key, "timeout": 600}} for key in keys])
    wait_until(lambda: len(stack.lines("reached-wait")) >= RUNS, 120, f"{RUNS} runs to reach their wait")
    time.sleep(1.0)  # the last reports are on their way back from the worker

    started = time.monotonic()
    _send_in_batches(stack, [{"name": "billing/paid", "data": {"id": f"{key}-other"}} for key in keys])
    unrelated = time.monotonic() - started
    time.sleep(1.0)
    assert [line for line in stack.lines("resumed") if str(line["id"]).startswith(tag)] == []

    started = time.monotonic()
    order = list(reversed(keys))  # not the order the runs started in
    paid = _send_in_batches(stack, [{"name": "billing/paid", "data": {"id": key, "ok": True}} for key in order])
    sent = time.monotonic() - started
    wait_until(
        lambda: len([line for line in stack.lines("resumed") if str(line["id"]).startswith(tag)]) >= RUNS,
        120,
        f"{RUNS} runs to resume",
    )
    resumed_all = time.monotonic() - started
    resumed = [line for line in stack.lines("resumed") if str(line["id"]).startswith(tag)]
    assert len(resumed) == RUNS
    event_of = dict(zip(order, paid, strict=True))
    for line in resumed:
        assert line["got"]["data"] == {"id": line["id"], "ok": True}
        assert line["got"]["id"] == event_of[line["id"]]
    assert len({line["run"] for line in resumed}) == RUNS
    # Each run then finished with its own event (resumed runs have one request left to go).
    runs = stack.dev.wait_runs(ids, timeout=60)
    for key, run in zip(keys, runs, strict=True):
        assert run["status"] == "Completed", run
        assert run["output"]["id"] == key and run["output"]["got"]["data"]["id"] == key
    print(
        f"\n{RUNS} waits: {RUNS} unrelated events accepted in {unrelated:.2f} s (none resumed); "
        f"{RUNS} matching events sent in {sent:.2f} s, all runs resumed {resumed_all:.2f} s after the first"
    )
