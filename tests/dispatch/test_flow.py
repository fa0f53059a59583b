"""`RequestFlow`, driven directly: every (state, event) pair, legal or not."""

from __future__ import annotations

import typing

import pytest

from connect.dispatch import CheckpointDecided, CheckpointJoined, ReplySettled
from connect.dispatch.flow import (
    Acknowledge,
    Acknowledged,
    Action,
    CheckpointSent,
    Decide,
    Deliver,
    DeliverStored,
    Event,
    Forwarded,
    HandOver,
    Hold,
    IllegalTransition,
    LeaseLapsed,
    Refuse,
    Release,
    Replied,
    ReplyStored,
    RequestFlow,
    State,
    Store,
    Wake,
)

RID = "01REQUEST"
CP = b"checkpoint"
REPLY = b"reply"

#: How to reach each state from a new flow.
_PATHS: dict[State, list[Event]] = {
    State.RUNNING: [],
    State.CHECKPOINTING: [CheckpointSent(CP)],
    State.REPLY_BEHIND: [CheckpointSent(CP), Replied(REPLY)],
    State.HANDED_OVER: [Replied(REPLY)],
    State.STORING: [Replied(REPLY)],
    State.SETTLED: [Replied(REPLY), ReplyStored(first=True)],
    State.LAPSED: [LeaseLapsed()],
}


def flow_in(state: State, *, takes_over: bool | None = None, offers: bool = True) -> RequestFlow:
    if takes_over is None:
        takes_over = state is State.HANDED_OVER
    flow = RequestFlow(takes_over=takes_over, offers_checkpoints=offers)
    for event in _PATHS[state]:
        flow.handle(event)
    assert flow.state is state
    return flow


S = State
ILLEGAL = None

#: (state, takes_over, event) -> (state after, actions), or ILLEGAL.
TABLE: list[tuple[State, bool, Event, tuple[State, list[Action]] | None]] = [
    # Forwarded: only while nothing is taken.
    (S.RUNNING, False, Forwarded(), (S.RUNNING, [])),
    (S.CHECKPOINTING, False, Forwarded(), ILLEGAL),
    (S.REPLY_BEHIND, False, Forwarded(), ILLEGAL),
    (S.HANDED_OVER, True, Forwarded(), ILLEGAL),
    (S.STORING, False, Forwarded(), ILLEGAL),
    (S.SETTLED, False, Forwarded(), ILLEGAL),
    (S.LAPSED, False, Forwarded(), ILLEGAL),
    # Acknowledged: a refusal wakes the waiter; late answers change nothing.
    (S.RUNNING, False, Acknowledged(True), (S.RUNNING, [])),
    (S.RUNNING, False, Acknowledged(False), (S.RUNNING, [Wake()])),
    (S.CHECKPOINTING, False, Acknowledged(False), (S.CHECKPOINTING, [])),
    (S.REPLY_BEHIND, False, Acknowledged(True), (S.REPLY_BEHIND, [])),
    (S.HANDED_OVER, True, Acknowledged(True), (S.HANDED_OVER, [])),
    (S.STORING, False, Acknowledged(True), (S.STORING, [])),
    (S.SETTLED, False, Acknowledged(False), (S.SETTLED, [])),
    (S.LAPSED, False, Acknowledged(True), (S.LAPSED, [])),
    # CheckpointSent.
    (S.RUNNING, False, CheckpointSent(CP), (S.CHECKPOINTING, [Decide(CP)])),
    (S.RUNNING, False, CheckpointSent(CP, on_lease=False), (S.RUNNING, [Refuse(stale=False)])),
    (S.CHECKPOINTING, False, CheckpointSent(CP), (S.CHECKPOINTING, [Refuse(stale=False)])),
    (S.REPLY_BEHIND, False, CheckpointSent(CP), (S.REPLY_BEHIND, [Refuse(stale=False)])),
    (S.HANDED_OVER, True, CheckpointSent(CP), (S.HANDED_OVER, [Refuse(stale=True)])),
    (S.STORING, False, CheckpointSent(CP), (S.STORING, [Refuse(stale=True)])),
    (S.SETTLED, False, CheckpointSent(CP), (S.SETTLED, [Refuse(stale=True)])),
    (S.LAPSED, False, CheckpointSent(CP), (S.LAPSED, [Refuse(stale=True)])),
    # CheckpointJoined: only with a reply behind, for a caller that commits it.
    (S.REPLY_BEHIND, True, CheckpointJoined(RID), (S.RUNNING, [Release()])),
    (S.REPLY_BEHIND, False, CheckpointJoined(RID), ILLEGAL),
    (S.RUNNING, True, CheckpointJoined(RID), ILLEGAL),
    (S.CHECKPOINTING, True, CheckpointJoined(RID), ILLEGAL),
    (S.HANDED_OVER, True, CheckpointJoined(RID), ILLEGAL),
    (S.STORING, False, CheckpointJoined(RID), ILLEGAL),
    (S.SETTLED, False, CheckpointJoined(RID), ILLEGAL),
    (S.LAPSED, False, CheckpointJoined(RID), ILLEGAL),
    # CheckpointDecided: only while a checkpoint is with the executor (or nobody waits any more).
    (S.CHECKPOINTING, False, CheckpointDecided(RID, True), (S.RUNNING, [])),
    (S.CHECKPOINTING, False, CheckpointDecided(RID, False), (S.RUNNING, [])),
    (S.REPLY_BEHIND, False, CheckpointDecided(RID, True), (S.RUNNING, [Release()])),
    (S.LAPSED, False, CheckpointDecided(RID, True), (S.LAPSED, [])),
    (S.RUNNING, False, CheckpointDecided(RID, True), ILLEGAL),
    (S.HANDED_OVER, True, CheckpointDecided(RID, True), ILLEGAL),
    (S.STORING, False, CheckpointDecided(RID, False), ILLEGAL),
    (S.SETTLED, False, CheckpointDecided(RID, True), ILLEGAL),
    # Replied.
    (S.RUNNING, True, Replied(REPLY), (S.HANDED_OVER, [HandOver(REPLY)])),
    (S.RUNNING, False, Replied(REPLY), (S.STORING, [Store(REPLY)])),
    (S.CHECKPOINTING, False, Replied(REPLY), (S.REPLY_BEHIND, [Hold()])),
    (S.REPLY_BEHIND, False, Replied(b"again"), (S.REPLY_BEHIND, [Hold()])),
    (S.HANDED_OVER, True, Replied(b"late"), (S.HANDED_OVER, [Store(b"late")])),
    (S.STORING, False, Replied(b"late"), (S.STORING, [Store(b"late")])),
    (S.SETTLED, False, Replied(b"late"), (S.SETTLED, [Store(b"late")])),
    (S.LAPSED, False, Replied(b"late"), (S.LAPSED, [Store(b"late")])),
    # ReplySettled: only a handed-over reply.
    (S.HANDED_OVER, True, ReplySettled(RID, True), (S.SETTLED, [Acknowledge()])),
    (S.HANDED_OVER, True, ReplySettled(RID, False), (S.STORING, [Store(REPLY)])),
    (S.RUNNING, True, ReplySettled(RID, True), ILLEGAL),
    (S.CHECKPOINTING, True, ReplySettled(RID, True), ILLEGAL),
    (S.REPLY_BEHIND, True, ReplySettled(RID, True), ILLEGAL),
    (S.STORING, False, ReplySettled(RID, True), ILLEGAL),
    (S.SETTLED, False, ReplySettled(RID, False), ILLEGAL),
    (S.LAPSED, False, ReplySettled(RID, True), ILLEGAL),
    # ReplyStored.
    (S.STORING, False, ReplyStored(first=True), (S.SETTLED, [Deliver(REPLY), Acknowledge()])),
    (S.STORING, False, ReplyStored(first=False), (S.SETTLED, [DeliverStored(), Acknowledge()])),
    (S.SETTLED, False, ReplyStored(first=False), (S.SETTLED, [Acknowledge()])),
    (S.HANDED_OVER, True, ReplyStored(first=True), (S.HANDED_OVER, [Acknowledge()])),
    (S.LAPSED, False, ReplyStored(first=True), (S.LAPSED, [Acknowledge()])),
    (S.RUNNING, False, ReplyStored(first=True), ILLEGAL),
    (S.CHECKPOINTING, False, ReplyStored(first=True), ILLEGAL),
    (S.REPLY_BEHIND, False, ReplyStored(first=True), ILLEGAL),
    # LeaseLapsed: only while no reply is durable or with the caller.
    (S.RUNNING, False, LeaseLapsed(), (S.LAPSED, [])),
    (S.CHECKPOINTING, False, LeaseLapsed(), (S.LAPSED, [])),
    (S.REPLY_BEHIND, False, LeaseLapsed(), (S.LAPSED, [])),
    (S.STORING, False, LeaseLapsed(), (S.LAPSED, [])),
    (S.HANDED_OVER, True, LeaseLapsed(), ILLEGAL),
    (S.SETTLED, False, LeaseLapsed(), ILLEGAL),
    (S.LAPSED, False, LeaseLapsed(), ILLEGAL),
]


def _id(row: tuple[State, bool, Event, object]) -> str:
    state, takes_over, event, _ = row
    return f"{state.value}{'+takes_over' if takes_over else ''}-{event!r}"


@pytest.mark.parametrize("row", TABLE, ids=[_id(r) for r in TABLE])
def test_transition(row: tuple[State, bool, Event, tuple[State, list[Action]] | None]) -> None:
    state, takes_over, event, expected = row
    flow = flow_in(state, takes_over=takes_over)
    if expected is None:
        with pytest.raises(IllegalTransition) as raised:
            flow.handle(event)
        assert raised.value.state is state and raised.value.event is event
        assert flow.state is state  # an illegal event changes nothing
        return
    assert flow.handle(event) == expected[1]
    assert flow.state is expected[0]


def test_every_state_and_event_kind_is_in_the_table() -> None:
    pairs = {(state, type(event)) for state, _, event, _ in TABLE}
    kinds = {type(event) for _, _, event, _ in TABLE}
    assert kinds == set(typing.get_args(Event))
    assert pairs == {(state, kind) for state in State for kind in kinds}


# --- sequences: the rules that span several events ------------------------------------


def test_a_refused_socket_checkpoint_stands_in_for_the_reply() -> None:
    flow = RequestFlow(takes_over=False, offers_checkpoints=False)
    assert flow.handle(CheckpointSent(CP)) == [Refuse(stale=False)]
    assert flow.handle(Replied(REPLY)) == [Store(CP)]


def test_a_refused_http_checkpoint_does_not() -> None:
    flow = RequestFlow(takes_over=False, offers_checkpoints=False)
    assert flow.handle(CheckpointSent(CP, over_socket=False)) == [Refuse(stale=False)]
    assert flow.handle(Replied(REPLY)) == [Store(REPLY)]


def test_a_checkpoint_the_executor_did_not_store_becomes_the_reply_held_behind_it() -> None:
    flow = RequestFlow(takes_over=True, offers_checkpoints=True)
    flow.handle(CheckpointSent(CP))
    assert flow.handle(Replied(REPLY)) == [Hold()]
    assert flow.handle(CheckpointDecided(RID, False)) == [Release()]
    assert flow.handle(Replied(REPLY)) == [HandOver(CP)]
    assert flow.reply_behind


def test_a_stored_checkpoint_lets_the_reply_through() -> None:
    flow = RequestFlow(takes_over=False, offers_checkpoints=True)
    flow.handle(CheckpointSent(CP))
    flow.handle(CheckpointDecided(RID, True))
    assert flow.refused is None
    assert flow.handle(Replied(REPLY)) == [Store(REPLY)]
    assert flow.handle(ReplyStored(first=True)) == [Deliver(REPLY), Acknowledge()]


def test_a_new_forward_drops_the_refused_checkpoint_of_the_last() -> None:
    flow = RequestFlow(takes_over=False, offers_checkpoints=False)
    flow.handle(CheckpointSent(CP))
    flow.handle(Forwarded())
    assert flow.refused is None
    assert flow.handle(Replied(REPLY)) == [Store(REPLY)]


def test_a_refused_request_takes_no_checkpoint() -> None:
    flow = RequestFlow(takes_over=False, offers_checkpoints=True)
    flow.handle(Acknowledged(False))
    assert flow.handle(CheckpointSent(CP)) == [Refuse(stale=False)]
    assert flow.state is State.RUNNING


def test_a_second_answer_to_the_same_forward_is_ignored() -> None:
    flow = RequestFlow(takes_over=False, offers_checkpoints=False)
    flow.handle(Acknowledged(True))
    assert flow.handle(Acknowledged(False)) == []
    assert flow.acked is True


@pytest.mark.parametrize("committed", [True, False])
def test_a_joined_checkpoint_shares_the_replys_commit(committed: bool) -> None:
    flow = RequestFlow(takes_over=True, offers_checkpoints=True)
    flow.handle(CheckpointSent(CP))
    flow.handle(Replied(REPLY))
    assert flow.joinable()
    assert flow.handle(CheckpointJoined(RID)) == [Release()]
    assert flow.handle(Replied(REPLY)) == [HandOver(REPLY)]
    assert flow.handle(CheckpointDecided(RID, committed)) == []
    if committed:
        assert flow.handle(ReplySettled(RID, True)) == [Acknowledge()]
    else:
        # The step was not stored: the request's reply is the checkpoint.
        assert flow.handle(ReplySettled(RID, False)) == [Store(CP)]
        assert flow.handle(ReplyStored(first=True)) == [Acknowledge()]  # already delivered
    assert flow.state is State.SETTLED


def test_a_joined_checkpoint_dropped_before_the_reply_is_handed_over() -> None:
    flow = RequestFlow(takes_over=True, offers_checkpoints=True)
    flow.handle(CheckpointSent(CP))
    flow.handle(Replied(REPLY))
    flow.handle(CheckpointJoined(RID))
    assert flow.handle(CheckpointDecided(RID, False)) == []
    assert flow.handle(Replied(REPLY)) == [HandOver(CP)]


def test_an_http_checkpoint_is_never_joined() -> None:
    flow = RequestFlow(takes_over=True, offers_checkpoints=True)
    flow.handle(CheckpointSent(CP, over_socket=False))
    flow.handle(Replied(REPLY))
    assert not flow.joinable()
    with pytest.raises(IllegalTransition):
        flow.handle(CheckpointJoined(RID))
    assert flow.handle(CheckpointDecided(RID, False)) == [Release()]
    assert flow.handle(Replied(REPLY)) == [HandOver(REPLY)]  # not the refused HTTP checkpoint


def test_only_a_caller_that_commits_replies_may_join() -> None:
    flow = RequestFlow(takes_over=False, offers_checkpoints=True)
    flow.handle(CheckpointSent(CP))
    assert not flow.joinable()
    flow.handle(Replied(REPLY))
    assert not flow.joinable()
