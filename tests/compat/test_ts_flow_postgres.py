"""The official TypeScript SDK's flow control on PostgreSQL: throttle, rate
limit, idempotency, singleton, debounce and batching (with the start gates
around them), each option's meaning with margins, by one `connect dev` on a
throwaway PostgreSQL and one Node worker process serving both TS apps
(`ts/flow_and_held_apps.mjs`). Every scenario is started at once and checked
as its runs end, so the options share the wait; the same scenarios on SQLite,
one per test, are in `test_official_start_limits.py` and `test_held_starts.py`."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.compat import npm
from tests.e2e.harness import DevServer, Proc, wait_until
from tests.postgres import PostgresServer

TS = Path(__file__).resolve().parent / "ts"


def test_ts_flow_control_on_postgres(postgres_server: PostgresServer, tmp_path: Path) -> None:
    dev = DevServer(tmp_path, database_url=postgres_server.create_database()).start()
    workdir = tmp_path / "ts"
    for name in ("flow_app.mjs", "held_app.mjs"):
        npm.prepare_script(TS / name, workdir)
    script = npm.prepare_script(TS / "flow_and_held_apps.mjs", workdir)
    worker = Proc(["node", str(script)], npm.node_env(dict(os.environ, CONNECT_API_URL=dev.url)), tmp_path / "w.log")
    try:
        assert dev.proc is not None
        wait_until(
            lambda: dev.proc is not None and dev.proc.output().count("worker ready: connection=") >= 2,
            90,
            "both TS apps",
        )

        def send(name: str, *datas: dict[str, object]) -> list[str]:
            return dev.send([{"name": name, "data": data} for data in datas])

        sent = time.time()
        throttled = send("flow/throttled", {}, {}, {})
        rated = send("flow/rated", *({"k": "a", "n": n} for n in range(3)))
        idempotent = send("flow/idempotent", {"order": "o-1"}, {"order": "o-1"})
        [holder] = send("flow/single-skip", {"k": "a", "sleep": 3, "n": 1})
        first_low = send("flow/throttled-priority", {"p": 0}, {"p": 0}, {"p": 0})
        [vip] = send("flow/throttled-priority", {"p": 600})
        debounced = [send("held/debounce", {"user": "u1", "n": n})[0] for n in range(2)]
        rate_held = send("held/debounce-rate", {"user": "u1", "n": 1}, {"user": "u1", "n": 2})
        batched = send("held/batch", *({"team": "a", "batch": True, "n": n} for n in range(3)))
        batch_throttled = send("held/batch-throttle", *({"n": n} for n in range(4)))
        wait_until(lambda: bool(dev.runs(holder)), 20, "the run holding the singleton key")
        [skipped] = send("flow/single-skip", {"k": "a", "n": 2})

        # throttle 1 per 2 s: three starts at least 1.5 s apart
        at = sorted(r["output"] for r in dev.wait_runs(throttled, timeout=60))
        assert at[1] - sent >= 1.99 and at[2] - at[1] >= 1.5, at
        # rate limit 2 per minute per key; idempotency one run per key
        runs = dev.wait_runs(rated + idempotent, timeout=60)
        assert [r["status"] for r in runs] == ["Completed", "Completed", "Skipped", "Completed", "Skipped"], runs
        assert runs[2]["skip_reason"].startswith("rate limit 2 per 60s: key 'a'")
        assert runs[4]["skip_reason"].startswith("idempotency: key 'o-1'")
        # singleton skip while its key's run is running
        runs = dev.wait_runs([holder, skipped], timeout=60)
        assert [(r["status"], r["output"]) for r in runs] == [("Completed", 1), ("Skipped", None)], runs
        # throttle with priority: the run of priority 600 sent last starts before the two of 0
        runs = dev.wait_runs([*first_low, vip], timeout=60)
        first, low_a, low_b, top = (r["output"] for r in runs)
        assert first < top < low_a < low_b, (first, top, low_a, low_b)
        # debounce: one run with the last event; a debounced event over the rate limit joins nothing
        [run] = dev.wait_runs([debounced[-1]], timeout=60)
        assert run["output"]["event"] == {"user": "u1", "n": 1} and dev.runs(debounced[0]) == []
        runs = dev.wait_runs(rate_held, timeout=60)
        assert [r["status"] for r in runs] == ["Completed", "Skipped"], runs
        assert runs[0]["output"]["event"] == {"user": "u1", "n": 1}
        # batching: a full batch at once, with its events in order; batches' runs throttled
        [run] = dev.wait_runs([batched[0]], timeout=60)
        assert [e["n"] for e in run["output"]["events"]] == [0, 1, 2]
        one, two = dev.wait_runs([batch_throttled[0], batch_throttled[2]], timeout=60)
        assert two["output"]["at"] - one["output"]["at"] >= 3.0, (one, two)
    finally:
        worker.stop()
        dev.stop()
