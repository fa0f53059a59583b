from __future__ import annotations

import json

import msgspec

from connect.executor.replies import error_from_body, parse_ops, result_json
from connect.executor.requests import build_request
from connect.store import PendingRequest, RunRecord
from protocol.payloads import Event


def test_request_body_matches_what_sdks_parse() -> None:
    run = RunRecord(
        run_id="R",
        function_id="app-fn",
        app_name="app",
        event_id="E",
        started_at_ms=1,
        max_attempts=5,
        disable_immediate_execution=True,
    )
    pending = PendingRequest("req", step_id="abc", attempt=2)
    event = Event(name="app/x", data={"k": 1}, id="E", ts=123)
    memos = {"h1": msgspec.Raw(b'{"data":{"x":[1,2]}}'), "h2": msgspec.Raw(b"null")}
    body = json.loads(build_request(run, pending, event, memos))
    # Every key is always present, as the official servers send it (`user` included).
    assert body["event"] == {"name": "app/x", "data": {"k": 1}, "id": "E", "ts": 123, "user": {}}
    assert body["events"] == [body["event"]]
    assert body["steps"] == {"h1": {"data": {"x": [1, 2]}}, "h2": None}
    assert body["use_api"] is False
    assert body["version"] == -1
    ctx = body["ctx"]
    assert ctx["run_id"] == "R" and ctx["attempt"] == 2 and ctx["max_attempts"] == 5
    assert ctx["disable_immediate_execution"] is True and ctx["use_api"] is False
    assert ctx["stack"] == {"stack": ["h1", "h2"], "current": 2}
    assert ctx["step_id"] == "abc"
    # No checkpoints offered: no `fn_id`, so the TypeScript SDK does not try to checkpoint.
    assert ctx["fn_id"] == "" and ctx["qi_id"] == "" and ctx["checkpoint_steps"] is False
    offered = json.loads(build_request(run, pending, event, memos, checkpoint_steps=True))["ctx"]
    assert offered["fn_id"] == "app-fn" and offered["qi_id"] == "req" and offered["checkpoint_steps"] is True


def test_reading_replies() -> None:
    one = b'{"op":"StepRun","id":"h","data":1}'
    assert [o.id for o in parse_ops(b"[" + one + b"," + one + b"]")] == ["h", "h"]
    assert parse_ops(one)[0].data == 1
    assert parse_ops(b"[]") == []
    assert result_json(b"") == b"null"
    assert error_from_body(b'{"name":"E","message":"m","code":"unknown"}') == {
        "name": "E",
        "message": "m",
    }
    assert error_from_body(b"plain text")["message"] == "plain text"
