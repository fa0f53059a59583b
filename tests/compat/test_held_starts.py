"""Debounce and event batching as the official SDKs register them: `connect dev`
(real process; SQLite, and PostgreSQL for the Python SDK) with a worker built
with the official Python SDK (`official_held_app.py`) or the official
TypeScript SDK (`ts/held_app.mjs`, Node 20 or newer on PATH). The functions return what the SDK gave them as
`ctx.event` / `ctx.events` (`event` / `events` in TypeScript).

The functions (the same in both apps):
* `digest`: `debounce {period 2s, key event.data.user, timeout 10s}`;
* `bulk`: `batchEvents {maxSize 3, timeout 2s, key event.data.team, if event.data.batch == true}`;
* with the start gates Inngest applies around them: `digest-throttled` (debounce 1s,
  throttle 1 per 4s), `digest-rated` (debounce 2s and rate limit 1 per minute, both
  keyed on `event.data.user`), `digest-single` (debounce 1s, singleton skip) and
  `bulk-throttled` (batches of 2, throttle 1 per 4s).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.compat import npm
from tests.e2e.harness import DevServer, Proc, wait_until

TS_APP = Path(__file__).resolve().parent / "ts" / "held_app.mjs"
APPS = {"official": "official-held", "ts": "ts-held"}


class Held:
    def __init__(self, sdk: str, tmp: Path, database_url: str | None = None) -> None:
        self.sdk = sdk
        self.tmp = tmp
        self.dev = DevServer(tmp, database_url=database_url).start()
        self.worker = self.start_worker()

    def start_worker(self) -> Proc:
        before = self.ready_workers()
        env = dict(os.environ, CONNECT_API_URL=self.dev.url, WORKER_NAME=f"{self.sdk}-held")
        if self.sdk == "official":
            worker = Proc([sys.executable, "tests/compat/official_held_app.py"], env, self.tmp / "worker.log")
        else:
            script = npm.prepare_script(TS_APP, self.tmp / "ts")
            worker = Proc(["node", str(script)], npm.node_env(env), self.tmp / "worker.log")
        wait_until(
            lambda: self.ready_workers() > before or worker.popen.poll() is not None, 60, f"the {self.sdk} worker"
        )
        assert worker.popen.poll() is None, worker.output()[-3000:]
        return worker

    def ready_workers(self) -> int:
        assert self.dev.proc is not None
        return self.dev.proc.output().count("worker ready: connection=")

    def send(self, name: str, data: dict[str, Any]) -> str:
        [event_id] = self.dev.send([{"name": name, "data": data}])
        return event_id

    def run_of(self, event_id: str, timeout: float = 60.0) -> dict[str, Any]:
        [run] = self.dev.wait_runs([event_id], timeout=timeout)
        assert run["status"] == "Completed", (run, self.worker.output()[-3000:])
        assert run["function_id"].startswith(f"{APPS[self.sdk]}-")
        return run

    def stop(self) -> None:
        self.worker.stop()
        self.dev.stop()


@pytest.fixture(scope="module", params=["official-sqlite", "official-postgres", "ts-sqlite"])
def held(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Held]:
    sdk, engine = request.param.split("-")
    url = request.getfixturevalue("postgres_server").create_database() if engine == "postgres" else None
    running = Held(sdk, tmp_path_factory.mktemp(f"held-{request.param}"), url)
    yield running
    running.stop()


def started_ms(run: dict[str, Any]) -> float:
    return datetime.fromisoformat(run["run_started_at"].replace("Z", "+00:00")).timestamp() * 1000


def test_a_burst_for_one_key_makes_one_run_with_the_last_event(held: Held) -> None:
    ids = []
    for i in range(4):
        last_sent = time.time() * 1000
        ids.append(held.send("held/debounce", {"user": "u1", "n": i}))
        time.sleep(0.3)
    other = held.send("held/debounce", {"user": "u2", "n": 9})
    run = held.run_of(ids[-1])
    assert run["output"] == {"event": {"user": "u1", "n": 3}, "events": [{"user": "u1", "n": 3}]}
    assert started_ms(run) >= last_sent + 2000 - 1  # the period after the last event (ms rounding)
    assert all(held.dev.runs(event_id) == [] for event_id in ids[:-1])
    assert held.run_of(other)["output"]["event"] == {"user": "u2", "n": 9}


def test_batches_fill_time_out_and_run_alone_when_if_is_false(held: Held) -> None:
    full = [held.send("held/batch", {"team": "a", "batch": True, "n": i}) for i in range(3)]
    opened = time.time() * 1000  # team b's batch opens with its first event, sent after this
    partial = [held.send("held/batch", {"team": "b", "batch": True, "n": i}) for i in range(2)]
    alone = held.send("held/batch", {"team": "a", "batch": False, "n": 7})
    run = held.run_of(full[0])
    assert run["output"] == {
        "event": {"team": "a", "batch": True, "n": 0},
        "events": [{"team": "a", "batch": True, "n": i} for i in range(3)],
    }
    assert held.run_of(alone)["output"]["events"] == [{"team": "a", "batch": False, "n": 7}]
    late = held.run_of(partial[0])
    assert [e["n"] for e in late["output"]["events"]] == [0, 1]
    assert started_ms(late) >= opened + 2000 - 1  # its timeout after it opened (ms rounding)
    # A full batch does not wait for its timeout.
    assert started_ms(run) < started_ms(late)


def test_a_restart_of_connect_dev_loses_no_pending_debounce_or_batch(held: Held) -> None:
    debounced = held.send("held/debounce", {"user": "u3", "n": 1})
    batched = [held.send("held/batch", {"team": "c", "batch": True, "n": i}) for i in range(2)]
    held.dev.stop()
    time.sleep(2.5)  # both came due while nothing ran
    held.dev.start()
    assert held.run_of(debounced, timeout=90)["output"]["event"] == {"user": "u3", "n": 1}
    assert [e["n"] for e in held.run_of(batched[0], timeout=90)["output"]["events"]] == [0, 1]


def test_a_debounced_run_waits_for_its_throttle_turn(held: Held) -> None:
    [first] = held.dev.wait_runs([held.send("held/debounce-throttle", {"n": 1})], timeout=60)
    later = held.run_of(held.send("held/debounce-throttle", {"n": 2}))
    assert later["output"]["at"] - first["output"]["at"] >= 3.0, (first, later)


def test_a_debounced_event_over_the_rate_limit_is_skipped_and_joins_nothing(held: Held) -> None:
    first = held.send("held/debounce-rate", {"user": "u1", "n": 1})
    over = held.send("held/debounce-rate", {"user": "u1", "n": 2})
    assert held.run_of(first)["output"]["event"] == {"user": "u1", "n": 1}
    [skipped] = held.dev.wait_runs([over], timeout=30)
    assert skipped["status"] == "Skipped" and skipped["skip_reason"].startswith("rate limit 1 per 60s: key 'u1'")


def test_a_debounced_run_is_skipped_while_a_singleton_run_is_running(held: Held) -> None:
    holder = held.send("held/debounce-single", {"sleep": 6, "n": 1})
    wait_until(lambda: bool(held.dev.runs(holder)), 20, "the debounced run holding the singleton")
    skipped = held.send("held/debounce-single", {"n": 2})
    runs = held.dev.wait_runs([holder, skipped], timeout=60)
    assert [r["status"] for r in runs] == ["Completed", "Skipped"], held.worker.output()[-3000:]
    assert runs[1]["skip_reason"].startswith("singleton: run "), runs[1]


def test_the_runs_of_batches_are_throttled(held: Held) -> None:
    ids = [held.send("held/batch-throttle", {"n": n}) for n in range(4)]
    first, second = held.run_of(ids[0]), held.run_of(ids[2])
    assert [[e["n"] for e in r["output"]["events"]] for r in (first, second)] == [[0, 1], [2, 3]]
    assert second["output"]["at"] - first["output"]["at"] >= 3.0, (first, second)
