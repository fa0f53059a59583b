"""Concurrency limits end to end: `connect dev` (SQLite and PostgreSQL) and a
real worker of our SDK, of the official Python SDK or of the official
TypeScript SDK (with its default checkpointing, and without), step bodies
counted on the worker side (`conc_counter`).

Each stack serves the same functions (`concurrency_app.py`,
`official_concurrency_app.py`, `ts/concurrency_app.mjs`); every scenario
counts bodies under names of its own, so the scenarios share one stack.
"""

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
from tests.e2e import conc_counter
from tests.e2e.harness import DevServer, Proc, start_worker, wait_for_log, wait_until
from tests.postgres import PostgresServer


@dataclass
class Stack:
    sdk: str
    dev: DevServer
    worker: Proc
    tmp: Path

    def send(self, name: str, data: dict[str, Any]) -> str:
        [event_id] = self.dev.send([{"name": name, "data": data}])
        return event_id

    def send_many(self, events: list[dict[str, Any]]) -> list[str]:
        return self.dev.send(events)

    def finished(self, event_ids: list[str], timeout: float = 120) -> list[dict[str, Any]]:
        runs = self.dev.wait_runs(event_ids, timeout=timeout)
        for run in runs:
            assert run["status"] == "Completed", (run, self.worker.output()[-3000:])
        return runs

    def starts(self, name: str) -> list[tuple[str, int, str, float]]:
        return [row for row in conc_counter.starts(self.tmp) if row[0] == name]


def _start_worker(dev: DevServer, tmp: Path, sdk: str) -> Proc:
    env = {"CONC_DIR": str(tmp)}
    if sdk == "ours":
        worker = start_worker(dev, tmp, name="conc-ours", target="tests.e2e.concurrency_app:client", env=env)
        wait_for_log(worker, "worker state ACTIVE", timeout=60)
        return worker
    assert dev.proc is not None
    before = dev.proc.output().count("worker ready: connection=")
    full_env = dict(os.environ, CONNECT_API_URL=dev.url, WORKER_NAME=f"conc-{sdk}", **env)
    if sdk == "official":
        worker = Proc([sys.executable, "-m", "tests.compat.official_concurrency_app"], full_env, tmp / "official.log")
    else:
        if sdk == "tsnocheckpoint":
            full_env["TS_CHECKPOINTING"] = "off"
        script = npm.prepare_script(TS_APP, tmp / "ts")
        worker = Proc(["node", str(script)], npm.node_env(full_env), tmp / f"{sdk}.log")
    wait_until(
        lambda: (
            (dev.proc is not None and dev.proc.output().count("worker ready: connection=") > before)
            or worker.popen.poll() is not None
        ),
        60,
        f"the {sdk} worker to be ready",
    )
    assert worker.popen.poll() is None, worker.output()[-3000:]
    return worker


TS_APP = Path(__file__).resolve().parents[1] / "compat" / "ts" / "concurrency_app.mjs"


@pytest.fixture(
    scope="module",
    params=[
        "ours-sqlite",
        "ours-postgres",
        "official-sqlite",
        "official-postgres",
        "ts-sqlite",
        "ts-postgres",
        "tsnocheckpoint-sqlite",
    ],
)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    sdk, engine = request.param.split("-")
    database_url = None
    if engine == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        database_url = server.create_database()
    tmp = tmp_path_factory.mktemp(f"conc-{request.param}")
    dev = DevServer(tmp, database_url=database_url).start()
    worker = _start_worker(dev, tmp, sdk)
    yield Stack(sdk, dev, worker, tmp)
    worker.stop()
    dev.stop()


def test_a_thousand_events_over_a_hundred_keys_never_exceed_two_steps_per_key(stack: Stack) -> None:
    events = [{"name": "conc/key", "data": {"key": f"k{i % 100}", "seconds": 0.05}} for i in range(1000)]
    ids: list[str] = []
    for start in range(0, len(events), 250):
        ids += stack.send_many(events[start : start + 250])
    runs = stack.finished(ids, timeout=300)
    assert len(runs) == 1000
    peaks = {name: peak for name, peak in conc_counter.peaks(stack.tmp).items() if name.startswith("key-")}
    assert len(peaks) == 100
    assert max(peaks.values()) <= 2, sorted(peaks.items(), key=lambda kv: -kv[1])[:5]
    # The limit was reached (the test would notice a limit of 1 as well as none at all).
    assert max(peaks.values()) == 2
    bodies = [row for row in conc_counter.starts(stack.tmp) if row[0].startswith("key-")]
    assert len(bodies) >= 1000


def test_a_limit_of_one_runs_parallel_steps_one_at_a_time(stack: Stack) -> None:
    started = time.monotonic()
    [run] = stack.finished([stack.send("conc/parallel", {"seconds": 0.4})], timeout=60)
    elapsed = time.monotonic() - started
    assert sorted(run["output"]) == ["0", "1", "2", "3"]
    rows = stack.starts("parallel")
    assert len(rows) >= 4
    assert max(count for _, count, _, _ in rows) == 1, rows
    # Four bodies of 0.4 s one after another: at least 1.6 s from the first start.
    assert rows[-1][3] - rows[0][3] >= 3 * 0.4 - 0.05, rows
    assert elapsed >= 1.5


def test_an_env_scoped_key_is_shared_by_two_functions(stack: Stack) -> None:
    events = [{"name": f"conc/shared-{fn}", "data": {"k": k, "seconds": 0.2}} for fn in "ab" * 3 for k in ("x", "y")]
    stack.finished(stack.send_many(events), timeout=60)
    for k in ("x", "y"):
        rows = stack.starts(f"shared-{k}")
        assert sorted(tag for _, _, tag, _ in rows) == ["a"] * 3 + ["b"] * 3
        assert max(count for _, count, _, _ in rows) == 1, rows
    # Different key values do not wait for each other.
    x, y = stack.starts("shared-x"), stack.starts("shared-y")
    assert min(abs(a[3] - b[3]) for a in x for b in y) < 0.2


def test_waiting_runs_start_oldest_first_and_priority_jumps_ahead(stack: Stack) -> None:
    blocker = stack.send("conc/ordered", {"n": "0", "seconds": 1.5})
    wait_until(lambda: bool(stack.starts("ordered")), 30, "the first run's step to start")
    ids = [blocker]
    for n in range(1, 5):
        ids.append(stack.send("conc/ordered", {"n": str(n)}))
        time.sleep(0.02)
    # Sent last, but 600 s ahead of everything queued.
    ids.append(stack.send("conc/ordered", {"n": "urgent", "prio": 600}))
    # A negative priority puts a run behind others sent after it.
    ids.append(stack.send("conc/ordered", {"n": "late", "prio": -600}))
    time.sleep(0.02)
    ids.append(stack.send("conc/ordered", {"n": "5"}))
    stack.finished(ids, timeout=60)
    order = [tag for _, _, tag, _ in stack.starts("ordered")]
    assert order == ["0", "urgent", "1", "2", "3", "4", "5", "late"], order
    assert max(count for _, count, _, _ in stack.starts("ordered")) == 1


def test_a_restart_loses_no_waiting_step(stack: Stack) -> None:
    """`connect dev` killed (SIGKILL) while steps wait for the slot, then started again."""
    ids = [stack.send("conc/durable", {"n": str(n), "seconds": 0.3}) for n in range(4)]
    wait_until(lambda: len(stack.starts("durable")) >= 2, 30, "two steps to have run")
    stack.dev.kill()
    stack.dev.start()
    runs = stack.finished(ids, timeout=120)
    assert sorted(r["output"] for r in runs) == ["0", "1", "2", "3"]
    rows = stack.starts("durable")
    assert len({tag for _, _, tag, _ in rows}) == 4
    assert len(rows) >= 8
    assert max(count for _, count, _, _ in rows) == 1, rows
    assert stack.dev.proc is not None
    wait_for_log(stack.dev.proc, "worker ready", timeout=60)
