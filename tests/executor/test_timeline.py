"""The run timeline's view of stored and pending steps (pure: `connect.executor.timeline`, `step_infos`)."""

from __future__ import annotations

import time

from connect.executor.step_infos import (
    ENDED_BY_CANCEL,
    ENDED_BY_RUN_END,
    clock_offset,
    kind_of,
    ran,
    span_ms,
    ulid_ms,
    waited,
)
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
    op = Opcode("StepRun", "h1", name="charge", displayName="Charge the card")
    info = ran(op, pending, 9_999_999_999_999, first=True, offset=None)
    assert (info.name, info.kind, info.attempts, info.ended_ms) == ("Charge the card", "run", 3, 9_999_999_999_999)
    assert info.started_ms == ulid_ms(pending.request_id)
    # A retry due later than its request was minted started when due.
    later = PendingRequest(pending.request_id, "h1", attempt=1, wake_at_ms=info.started_ms + 5000)
    assert ran(Opcode("StepRun", "h1", name="charge"), later, 1, first=True, offset=None).started_ms == (
        info.started_ms + 5000
    )
    no_request = ran(Opcode("StepRun", "h1", name="charge"), None, 7, first=True, offset=None)
    assert no_request == StepInfo(name="charge", ended_ms=7)


def test_a_later_step_of_a_request_took_one_attempt_and_starts_when_the_worker_says() -> None:
    """A step run after a checkpoint within the request: 1 attempt (a failure
    would have ended the request), and the times its worker reported, moved
    onto the platform's clock so the last step ends when the message came."""
    pending = PendingRequest(new_ulid(), attempt=3)
    worker_ms = 1_000_000  # the worker's clock is far behind the platform's
    ops = [
        Opcode("StepRun", "h1", displayName="a", timing={"a": worker_ms * 1_000_000, "b": 20_000_000}),
        Opcode("StepRun", "h2", displayName="b", timing={"a": (worker_ms + 50) * 1_000_000, "b": 30_000_000}),
    ]
    now_ms = 50_000_000
    offset = clock_offset(ops, now_ms)
    first, second = (ran(op, pending, now_ms, first=i == 0, offset=offset) for i, op in enumerate(ops))
    assert (first.attempts, second.attempts) == (4, 1)
    assert (second.started_ms, second.ended_ms) == (now_ms - 30, now_ms)
    assert (first.started_ms, first.ended_ms) == (now_ms - 80, now_ms - 60)
    # Without timing a later step has no start to show; the first keeps its request's.
    bare = Opcode("StepRun", "h2", displayName="b")
    assert ran(bare, pending, now_ms, first=False, offset=None).started_ms == 0
    assert ran(bare, pending, now_ms, first=True, offset=None).started_ms == ulid_ms(pending.request_id)


def test_timing_of_another_shape_is_ignored() -> None:
    for timing in [None, "soon", {"a": "1", "b": 2}, {"a": -5, "b": 1}, {"a": 5, "b": -1}, {"a": True, "b": 1}, [1, 2]]:
        op = Opcode("StepRun", "h", timing=timing)
        assert span_ms(op) is None and clock_offset([op], 9) is None
    assert span_ms(Opcode("StepRun", "h", timing={"a": 1.765e18, "b": 2.5e6})) == (1_765_000_000_000, 2)


def test_a_step_that_sent_events_has_its_own_kind() -> None:
    sent = Opcode("StepRun", "h", name="sendEvent", displayName="notify", opts={"type": "step.sendEvent"})
    assert kind_of(sent) == "send_event" and kind_of(Opcode("StepRun", "h", opts={"type": "other"})) == "run"
    run = RunRecord("r", "app-fn", "app", "e", 1000, status="Completed")
    info = ran(sent, PendingRequest(new_ulid()), 5000, first=True, offset=None)
    (step,) = timeline(run, [StepMemo("h", b'{"data":["01J"]}', info)])
    assert (step["kind"], step["name"], step["output"], step["attempts"]) == ("send_event", "notify", ["01J"], 1)


def test_a_sleep_or_wait_the_run_end_cut_short_shows_how() -> None:
    run = RunRecord("r", "app-fn", "app", "e", 1000, status="Cancelled")
    nap = Waiting("sleep", "h2", due_ms=90_000, name="nap", since_ms=2000)
    pay = Waiting("wait", "h3", due_ms=90_000, event="billing/paid", name="payment", since_ms=3000)
    memos = [
        StepMemo("h2", b"null", waited(nap, 7000, ENDED_BY_CANCEL)),
        StepMemo("h3", b"null", waited(pay, 7000, ENDED_BY_RUN_END)),
    ]
    sleep, wait = timeline(run, memos)
    assert (sleep["status"], sleep["ended_by"], sleep["ended_at"], sleep["due_at"]) == (
        "Cancelled",
        "cancelled",
        "1970-01-01T00:00:07.000Z",
        "1970-01-01T00:01:30.000Z",
    )
    assert (wait["status"], wait["ended_by"], wait["output"]) == ("Cancelled", "run_ended", None)


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


def test_a_step_stored_without_its_request_has_no_attempts_or_start_to_show() -> None:
    """Its attempts and start are not known, and show as null, not as 0."""
    run = RunRecord("r", "app-fn", "app", "e", 1000, status="Completed")
    op = Opcode(op="StepRun", id="h7", name="greet", displayName="write the greeting")
    (step,) = timeline(run, [StepMemo("h7", b'{"data":"hi"}', ran(op, None, 5000, first=False, offset=None))])
    assert (step["name"], step["kind"], step["attempts"], step["started_at"], step["ended_at"]) == (
        "write the greeting",
        "run",
        None,
        None,
        "1970-01-01T00:00:05.000Z",
    )
