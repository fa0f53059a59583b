"""The run timeline's view of stored and pending steps (pure: `connect.executor.timeline`, `step_infos`)."""

from __future__ import annotations

import time

from connect.executor.step_infos import ran, ulid_ms, waited
from connect.executor.timeline import timeline
from connect.store import PendingRequest, RunRecord, StepInfo, StepMemo, Waiting
from protocol.ids import new_ulid
from protocol.payloads import Opcode


def test_a_request_id_tells_when_it_was_minted() -> None:
    before = int(time.time() * 1000)
    minted = ulid_ms(new_ulid())
    assert before <= minted <= int(time.time() * 1000)
    assert ulid_ms("not-a-ulid") == 0 and ulid_ms("step") == 0


def test_a_step_a_worker_ran_is_named_as_written_with_its_attempts() -> None:
    pending = PendingRequest(new_ulid(), "h1", attempt=2, wake_at_ms=0)
    info = ran(Opcode("StepRun", "h1", name="charge", displayName="Charge the card"), pending, 9_999_999_999_999)
    assert (info.name, info.kind, info.attempts, info.ended_ms) == ("Charge the card", "run", 3, 9_999_999_999_999)
    assert info.started_ms == ulid_ms(pending.request_id)
    # A retry due later than its request was minted started when due.
    later = PendingRequest(pending.request_id, "h1", attempt=1, wake_at_ms=info.started_ms + 5000)
    assert ran(Opcode("StepRun", "h1", name="charge"), later, 1).started_ms == info.started_ms + 5000
    assert ran(Opcode("StepRun", "h1", name="charge"), None, 7) == StepInfo(name="charge", ended_ms=7)


def test_stored_steps_say_how_they_ended() -> None:
    run = RunRecord("r", "app-fn", "app", "e", 1000, status="Completed")
    nap = Waiting("sleep", "h2", due_ms=5000, name="nap", since_ms=2000)
    pay = Waiting("wait", "h3", due_ms=9000, event="billing/paid", name="payment", since_ms=5000)
    child = Waiting("invoke", "h4", due_ms=9000, name="child", since_ms=6000)
    memos = [
        StepMemo("h1", b'{"error":{"name":"Error","message":"down"}}', StepInfo(name="charge", attempts=2)),
        StepMemo("h2", b"null", waited(nap, 5001)),
        StepMemo("h3", b"null", waited(pay, 9000)),
        StepMemo("h4", b'{"error":{"name":"InngestInvokeTimeoutError","message":"late"}}', waited(child, 9000)),
        StepMemo("h5", b'{"data":{"ok":true}}'),
    ]
    charge, sleep, wait, invoke, old = timeline(run, memos)
    assert (charge["status"], charge["attempts"], charge["error"]["message"], charge["output"]) == (
        "Failed",
        2,
        "down",
        None,
    )
    assert (sleep["kind"], sleep["ended_by"], sleep["due_at"], sleep["started_at"]) == (
        "sleep",
        "woke",
        "1970-01-01T00:00:05.000Z",
        "1970-01-01T00:00:02.000Z",
    )
    assert (wait["ended_by"], wait["output"]) == ("timeout", None)
    assert (invoke["kind"], invoke["ended_by"], invoke["status"]) == ("invoke", "timeout", "Failed")
    # A step stored without its info (by an older release) shows its result alone.
    assert (old["name"], old["kind"], old["output"], old["started_at"]) == (None, None, {"ok": True}, None)


def test_a_running_run_shows_the_steps_under_way() -> None:
    request = PendingRequest(new_ulid(), "h9", attempt=1)
    run = RunRecord(
        "r",
        "app-fn",
        "app",
        "e",
        1000,
        requests=[PendingRequest(new_ulid()), request],
        waiting=[Waiting("wait", "h8", due_ms=9000, event="x", name="approval", since_ms=3000)],
    )
    done, running, approval = timeline(run, [StepMemo("h1", b'{"data":1}')])
    assert done["output"] == 1
    assert (running["id"], running["status"], running["attempts"], running["name"]) == ("h9", "Running", 2, None)
    assert (approval["name"], approval["status"], approval["due_at"]) == (
        "approval",
        "Waiting",
        "1970-01-01T00:00:09.000Z",
    )


def test_a_rerun_copies_the_event_and_is_refused_without_its_function_or_event() -> None:
    from connect.executor.reruns import RerunRefused, rerun_event
    from connect.executor.triggers import FunctionInfo, Target
    from connect.store import EventRecord

    run = RunRecord("r", "app-fn", "app", "e1", 1000, status="Completed")
    record = EventRecord("e1", "app/x", 5, 6, b'{"name":"app/x","data":{"k":1},"id":"e1","ts":5,"user":{"u":2}}')
    info = FunctionInfo(Target("app", "app-fn", 4))
    again = rerun_event(run, record, info, 9000)
    assert (again.name, again.data, again.user, again.ts) == ("app/x", {"k": 1}, {"u": 2}, 9000)
    assert again.id != "e1" and ulid_ms(again.id) > 0
    for event, function, reason in [(record, None, "not registered now"), (None, info, "no longer stored")]:
        try:
            rerun_event(run, event, function, 9000)
        except RerunRefused as exc:
            assert reason in str(exc)
        else:
            raise AssertionError("a rerun that cannot start was not refused")


def test_a_step_run_on_within_the_request_before_it_has_no_attempts_or_start_to_show() -> None:
    """A worker that checkpoints ran it without a request of its own: its
    attempts and start are not known, and show as null, not as 0."""
    run = RunRecord("r", "app-fn", "app", "e", 1000, status="Completed")
    op = Opcode(op="StepRun", id="h7", name="greet", displayName="write the greeting")
    (step,) = timeline(run, [StepMemo("h7", b'{"data":"hi"}', ran(op, None, 5000))])
    assert (step["name"], step["kind"], step["attempts"], step["started_at"], step["ended_at"]) == (
        "write the greeting",
        "run",
        None,
        None,
        "1970-01-01T00:00:05.000Z",
    )
