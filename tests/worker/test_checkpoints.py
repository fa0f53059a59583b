"""The checkpoint rules of `connect.worker.checkpoints`, driven directly (no sockets)."""

from __future__ import annotations

import pytest

from connect.worker.checkpoints import Answered, Checkpoints

A, B = object(), object()  # two connections


def test_a_stored_checkpoint_answers_true_and_leaves_the_reply_alone() -> None:
    book: Checkpoints[object, str] = Checkpoints()
    book.sent(A, "r1", b"cp", "wait-1")
    assert not book.may_send("r1") and len(book) == 1
    assert book.answer("r1", True) == Answered("r1", "wait-1", True)
    assert book.reply("r1", b"reply") == b"reply"
    assert len(book) == 0 and book.may_send("r1")


@pytest.mark.parametrize(
    ("reply_first", "expected_answer", "expected_reply"),
    [
        # Refused before the reply came: the reply is replaced by the checkpoint.
        (False, Answered("r1", "wait-1", False), b"cp"),
        # Refused after the reply went out behind it: the buffered reply is replaced.
        (True, Answered("r1", "wait-1", False, replace=b"cp"), b"reply"),
    ],
)
def test_a_refused_checkpoint_ends_the_request_with_that_step(
    reply_first: bool, expected_answer: Answered[str], expected_reply: bytes
) -> None:
    book: Checkpoints[object, str] = Checkpoints()
    book.sent(A, "r1", b"cp", "wait-1")
    reply = book.reply("r1", b"reply") if reply_first else None
    assert book.answer("r1", False) == expected_answer
    if reply is None:
        reply = book.reply("r1", b"reply")
    assert reply == expected_reply
    assert book.reply("r1", b"again") == b"again"  # the refusal is used once


def test_a_lost_connection_answers_its_checkpoints_not_stored() -> None:
    book: Checkpoints[object, str] = Checkpoints()
    book.sent(A, "r1", b"cp1", "wait-1")
    book.sent(B, "r2", b"cp2", "wait-2")
    assert book.lost(A) == [Answered("r1", "wait-1", False)]
    assert book.answer("r1", True) is None  # a late answer for it changes nothing
    assert len(book) == 1
    assert book.reply("r1", b"reply") == b"cp1"


def test_a_checkpoint_that_could_not_go_out_replaces_the_reply() -> None:
    book: Checkpoints[object, str] = Checkpoints()
    book.not_sent("r1", b"cp")
    assert book.reply("r1", b"reply") == b"cp"
