"""Middleware on real `connect dev` and real workers (`tests/e2e/middleware_app.py`).

* A middleware class written for the official SDK, with only its imports
  changed, runs on our worker with its hooks called in the official order.
* Encryption end to end, on SQLite and PostgreSQL: what the store holds (step
  outputs, event data, the run's output) is ciphertext; handlers see
  plaintext; a run started on our worker is finished by an official Python
  worker using `inngest-encryption` with the same key, and the other way round.
* `LoggerMiddleware`'s fields on the worker's JSON log lines.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import inngest
from inngest_encryption import EncryptionMiddleware as OfficialEncryption

from connect.sdk import Client, Event
from connect.sdk.encryption import EncryptionMiddleware, is_encrypted
from connect.store.open import open_store
from tests.e2e.harness import DevServer, Proc, complete_lines, start_worker, wait_for_log, wait_until
from tests.e2e.middleware_app import KEY, recording_client
from tests.e2e.test_steps_features import ready_workers


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in complete_lines(path)]


def test_a_ported_middleware_sees_its_hooks_in_the_official_order(tmp_path: Path) -> None:
    recorders = recording_client.middleware
    dev = DevServer(tmp_path).start()
    log = tmp_path / "mw.jsonl"
    worker = start_worker(dev, tmp_path, target="tests.e2e.middleware_app:recorded_apps", env={"MW_LOG": str(log)})
    try:
        wait_for_log(worker, "worker state ACTIVE", timeout=60)
        [event_id] = dev.send([{"name": "mw/record", "data": {}}])
        [run] = dev.wait_runs([event_id], timeout=60)
        assert run["status"] == "Completed" and run["output"] == 2, run
        # Outside a function, `client.send` runs the client's middleware, built for that send.
        os.environ["MW_LOG"] = str(tmp_path / "send.jsonl")
        try:
            sender = Client("mw-ours", api_base_url=dev.url, event_key=dev.event_key, middleware=recorders)
            [sent_id] = asyncio.run(sender.send(Event(name="mw/outside", data={})))
        finally:
            del os.environ["MW_LOG"]
    finally:
        worker.stop()
        dev.stop()

    outside = _lines(tmp_path / "send.jsonl")
    assert [(c["hook"], c["label"]) for c in outside] == [
        ("init", "A"),
        ("init", "B"),
        ("before_send_events", "A"),
        ("before_send_events", "B"),
        ("after_send_events", "B"),
        ("after_send_events", "A"),
    ]
    assert outside[2]["events"] == ["mw/outside"] and outside[-1]["ids"] == 1 and sent_id

    calls = [(c["hook"], c["label"]) for c in _lines(log)]
    chain = ["A", "B", "C"]  # the client's A and B, then the function's C
    back = chain[::-1]

    def each(hook: str, order: list[str]) -> list[tuple[str, str]]:
        return [(hook, label) for label in order]

    opening = each("init", chain) + each("transform_input", chain) + each("before_execution", chain)
    closing = each("after_execution", back) + each("transform_output", back) + each("before_response", chain)
    sending = each("before_send_events", chain) + each("after_send_events", back)
    # Request 1 runs step "a"; request 2 replays it and runs the send; request 3 returns.
    assert calls == opening + closing + opening + sending + closing + opening + closing

    records = _lines(log)
    outputs = [(c["step"], c["output"]) for c in records if c["hook"] == "transform_output" and c["label"] == "A"]
    assert outputs[0] == ("a", 1) and outputs[1][0] == "send" and outputs[2] == (None, 2)
    memos = [c["memos"] for c in records if c["hook"] == "transform_input" and c["label"] == "A"]
    assert memos == [0, 1, 2]
    sent = [c for c in records if c["hook"] == "after_send_events"]
    assert all(c["ids"] == 1 and c["error"] is None for c in sent)
    assert {c["run"] for c in records if c["hook"] != "init"} == {run["run_id"]}


# --- encryption across both SDKs ---------------------------------------------------------------


def _start(sdk: str, dev: DevServer, tmp: Path, env: dict[str, str], name: str) -> Proc:
    before = ready_workers(dev)
    if sdk == "ours":
        worker = start_worker(dev, tmp, name=name, target="tests.e2e.middleware_app:enc_apps", env=env)
    else:
        full = {**env, "CONNECT_API_URL": dev.url, "WORKER_NAME": name}
        worker = Proc(
            [sys.executable, "tests/compat/official_encryption_app.py"], {**os.environ, **full}, tmp / f"{name}.log"
        )
    wait_until(
        lambda: ready_workers(dev) > before or worker.popen.poll() is not None, 60, f"the {sdk} worker to be ready"
    )
    assert worker.popen.poll() is None, worker.output()[-3000:]
    return worker


def _run_id(dev: DevServer, event_id: str) -> str:
    wait_until(lambda: bool(dev.runs(event_id)), 30, "the run to start")
    return str(dev.runs(event_id)[0]["run_id"])


def _relay(
    dev: DevServer, tmp: Path, env: dict[str, str], send: Any, tag: str, starts: str, finishes: str
) -> tuple[str, str]:
    """One relay run: sent by `send`, its first step on `starts`, the rest on `finishes`."""
    seen = tmp / "seen.jsonl"
    worker = _start(starts, dev, tmp, env, f"{starts}-{tag}")
    try:
        event_id = send(tag)
        run_id = _run_id(dev, event_id)
        wait_until(lambda: any(s["run"] == run_id and s["what"] == "first" for s in _lines(seen)), 60, "the first step")
    finally:
        worker.stop()  # drains: the first step's result is stored before it exits
    worker = _start(finishes, dev, tmp, env, f"{finishes}-{tag}")
    try:
        dev.send([{"name": "enc/go", "data": {"run": tag}}])
        [run] = dev.wait_runs([event_id], timeout=90)
        assert run["status"] == "Completed", (run, worker.output()[-3000:])
        wait_until(
            lambda: any(s["what"] == "told" and s["value"] == {"secret": f"secret-{tag}"} for s in _lines(seen)),
            60,
            "the told event's listener",
        )
    finally:
        worker.stop()
    return event_id, run_id


def test_encryption_end_to_end_with_the_official_sdk(tmp_path: Path, database_url: str | None) -> None:
    dev = DevServer(tmp_path, database_url=database_url).start()
    env = {"SEEN_LOG": str(tmp_path / "seen.jsonl"), "CONNECT_LOG_FORMAT": "json"}
    ours_client = Client(
        "mw-enc", api_base_url=dev.url, event_key=dev.event_key, middleware=[EncryptionMiddleware.factory(KEY)]
    )
    theirs_client = inngest.Inngest(
        app_id="mw-enc",
        is_production=False,
        api_base_url=dev.url,
        event_api_base_url=dev.url,
        event_key=dev.event_key,
        middleware=[OfficialEncryption.factory(KEY)],
    )

    def send_ours(tag: str) -> str:
        data = {"run": tag, "encrypted": {"secret": f"secret-{tag}"}}
        return ours_client.send_sync(Event(name="enc/relay", data=data))[0]

    def send_theirs(tag: str) -> str:
        data = {"run": tag, "encrypted": {"secret": f"secret-{tag}"}}
        return theirs_client.send_sync(inngest.Event(name="enc/relay", data=data))[0]

    try:
        one = _relay(dev, tmp_path, env, send_ours, "one", "ours", "official")
        two = _relay(dev, tmp_path, env, send_theirs, "two", "official", "ours")
        stored = asyncio.run(_read_store(dev, [one[1], two[1]], [one[0], two[0]]))
    finally:
        dev.stop()

    box = EncryptionMiddleware(ours_client, None, KEY)
    # What each handler saw was plaintext, whichever SDK wrote it.
    seen = {(s["run"], s["sdk"], s["what"]): s["value"] for s in _lines(tmp_path / "seen.jsonl")}
    assert seen[(one[1], "ours", "first")] == "secret-one"
    assert seen[(one[1], "official", "second")] == {"by": "ours", "secret": "secret-one"}
    assert seen[(two[1], "official", "first")] == "secret-two"
    assert seen[(two[1], "ours", "second")] == {"by": "official", "secret": "secret-two"}

    # The store holds ciphertext only.
    for text in stored["raw"]:
        assert "secret-one" not in text and "secret-two" not in text, text
    for run_id, first_by, second_by in ((one[1], "ours", "official"), (two[1], "official", "ours")):
        memos = stored["memos"][run_id]
        assert len(memos) == 4, memos  # first, go, second, tell
        step_outputs = [m["data"] for m in memos if isinstance(m, dict) and set(m) == {"data"}]
        assert len(step_outputs) == 3 and all(is_encrypted(d) for d in step_outputs), memos
        output = stored["outputs"][run_id]
        assert is_encrypted(output)
        plain = box.decrypt(output)
        tag = "one" if run_id == one[1] else "two"
        assert plain["first"] == {"by": first_by, "secret": f"secret-{tag}"}
        assert plain["second"] == {"by": second_by, "first": plain["first"], "secret": f"secret-{tag}"}
    for body in stored["events"]:
        assert is_encrypted(body["data"]["encrypted"]), body
        assert body["data"]["run"] in ("one", "two")  # fields beside it stay plain, for matching
    assert sorted(b["name"] for b in stored["events"]) == ["enc/relay", "enc/relay", "enc/told", "enc/told"]

    # LoggerMiddleware: our worker's JSON lines carry the run, the function and the step,
    # and a line the handler logs before its stored steps is logged once per run, not per request.
    lines = []
    for log in tmp_path.glob("ours-*.log"):
        for line in log.read_text().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
    started = [line for line in lines if line["message"] == "relay started"]
    assert [(line["run_id"], line["function_id"]) for line in started] == [(one[1], "mw-enc-relay")], started
    [in_step] = [line for line in lines if line["message"] == "in the first step"]
    assert (in_step["run_id"], in_step["function_id"], in_step["step_id"]) == (one[1], "mw-enc-relay", "first")
    assert "step_id" not in started[0]


async def _read_store(dev: DevServer, run_ids: list[str], event_ids: list[str]) -> dict[str, Any]:
    store = await open_store(str(dev.db), dev.database_url)
    try:
        raw: list[str] = []
        memos: dict[str, list[Any]] = {}
        outputs: dict[str, Any] = {}
        for run_id in run_ids:
            found = await store.get_memos(run_id)
            raw += [m.result.decode() for m in found]
            memos[run_id] = [json.loads(m.result) for m in found]
            run = await store.get_run(run_id)
            assert run is not None and run.output is not None
            raw.append(run.output.decode())
            outputs[run_id] = json.loads(run.output)
        records = [r for r in await store.get_events(event_ids) if r is not None]
        records += await store.list_events("enc/told", None, 10)
        raw += [r.body.decode() for r in records]
        return {"raw": raw, "memos": memos, "outputs": outputs, "events": [json.loads(r.body) for r in records]}
    finally:
        await store.close()
