"""Step ids hash exactly as the official SDKs hash them (protocol notes §5.1)."""

from __future__ import annotations

import pytest

from connect.sdk.replay import Replay
from protocol.payloads import hash_step_id

VECTORS = [
    ("fetch-user", "857c0b3e9253ce40ce09381575f27504abb803ea"),
    ("fetch-user:1", "9d76ac9c53ae9398d015f690b8e470d52f1ed83f"),
    ("fetch-user:2", "31db2b12347f1554813ddaf55487227725c4eb2f"),
    ("greet", "35ff71782def36154c8c5bb550a28b4665c227e0"),
    ("nap", "c2640f79b4ed481b838ce4ad75330aa3f825d4d9"),
    ("emit", "2e96e89125f4c1aef797410a4bfdb32c0632ef0c"),
    ("my-step-id", "e7d8a2f140845095749d60246ff1110c9d01d76a"),
]


def _replay() -> Replay:
    return Replay({}, target=None, disable_immediate_execution=False, attempt=0, max_attempts=None)


@pytest.mark.parametrize(("pre_hash", "digest"), VECTORS)
def test_table_vectors(pre_hash: str, digest: str) -> None:
    assert hash_step_id(pre_hash) == digest


def test_repeated_ids_are_counted_per_request() -> None:
    replay = _replay()
    first, second, third = (replay.identify("fetch-user") for _ in range(3))
    other = replay.identify("greet")
    assert [first.hashed, second.hashed, third.hashed] == [d for _, d in VECTORS[:3]]
    assert [first.index, second.index, third.index] == [None, 1, 2]
    assert other.hashed == "35ff71782def36154c8c5bb550a28b4665c227e0"
    assert other.index is None
    # A fresh request starts counting again.
    assert _replay().identify("fetch-user").hashed == VECTORS[0][1]


def test_explicit_suffix_collides_like_the_official_sdk() -> None:
    replay = _replay()
    replay.identify("a")
    assert replay.identify("a").hashed == _replay().identify("a:1").hashed


def test_official_sdk_agrees() -> None:
    base = pytest.importorskip("inngest._internal.step_lib.base")
    official = base.StepBase(None, None, base.StepIDCounter(), None)
    ours = _replay()
    for user_id in ["fetch-user", "fetch-user", "greet", "fetch-user", "greet", "émoji-✓"]:
        theirs = official._parse_step_id(user_id)
        mine = ours.identify(user_id)
        assert (mine.hashed, mine.index) == (theirs.hashed, theirs.index)
