"""What a function's concurrency limits and priority turn into per request:
the keys and limits claimed, and the place in line."""

from __future__ import annotations

import pytest

from connect.executor.concurrency import function_limits, priority_seconds
from connect.executor.expressions import Expression
from connect.store.base import SlotClaim
from protocol.payloads import ConcurrencyLimit, FunctionConfig, PriorityConfig, Trigger


def fn(concurrency: object = None, priority: str | None = None, fn_id: str = "app-fn") -> FunctionConfig:
    return FunctionConfig(
        id=fn_id,
        triggers=[Trigger(event="e")],
        steps={},
        concurrency=concurrency,  # type: ignore[arg-type]
        priority=None if priority is None else PriorityConfig(run=priority),
    )


EVENT = {"name": "e", "data": {"user": "ada", "n": 7, "tier": {"a": 1}}, "id": "x", "ts": 1, "user": {}}


def test_no_limit_is_nothing_to_do() -> None:
    assert function_limits(fn()) is None
    assert function_limits(fn([])) is None  # the official Python SDK's "none"
    assert function_limits(fn(0)) is None  # 0 is no limit, as the official server reads it
    assert function_limits(fn([ConcurrencyLimit(limit=0, key="event.data.user")])) is None


def test_every_form_an_sdk_sends() -> None:
    number = function_limits(fn(5))
    assert number is not None and number.claims(EVENT) == [SlotClaim("fn:app-fn:", 5)]
    keyed = function_limits(fn(ConcurrencyLimit(limit=2, key="event.data.user")))
    assert keyed is not None and keyed.claims(EVENT) == [SlotClaim("fn:app-fn:ada", 2)]
    both = function_limits(
        fn(
            [
                ConcurrencyLimit(limit=10),
                ConcurrencyLimit(limit=2, key="event.data.user", scope="env"),
            ]
        )
    )
    assert both is not None and both.claims(EVENT) == [SlotClaim("fn:app-fn:", 10), SlotClaim("env:ada", 2)]


def test_scopes_share_counters_across_functions_and_fn_does_not() -> None:
    a = function_limits(fn([ConcurrencyLimit(limit=1, key="event.data.user", scope="account")], fn_id="a"))
    b = function_limits(fn([ConcurrencyLimit(limit=3, key="event.data.user", scope="account")], fn_id="b"))
    assert a is not None and b is not None
    assert a.claims(EVENT) == [SlotClaim("account:ada", 1)]
    assert b.claims(EVENT) == [SlotClaim("account:ada", 3)]
    c = function_limits(fn([ConcurrencyLimit(limit=1, key="event.data.user")], fn_id="c"))
    assert c is not None and c.claims(EVENT) == [SlotClaim("fn:c:ada", 1)]


def test_key_values_of_other_types_and_keys_that_fail() -> None:
    limits = function_limits(
        fn(
            [
                ConcurrencyLimit(limit=1, key="event.data.n"),
                ConcurrencyLimit(limit=2, key="event.data.tier", scope="env"),
            ]
        )
    )
    assert limits is not None
    assert limits.claims(EVENT) == [SlotClaim("fn:app-fn:7", 1), SlotClaim('env:{"a":1}', 2)]
    # A missing field counts under the key's empty value: the run waits its turn there.
    missing = function_limits(fn([ConcurrencyLimit(limit=1, key="event.data.nope")]))
    assert missing is not None and missing.claims(EVENT) == [SlotClaim("fn:app-fn:", 1)]
    # A long value is stored as its hash.
    long = {**EVENT, "data": {"user": "u" * 500}}
    keyed = function_limits(fn([ConcurrencyLimit(limit=1, key="event.data.user")]))
    assert keyed is not None
    [claim] = keyed.claims(long)
    assert claim.key.startswith("fn:app-fn:sha256:") and len(claim.key) < 100
    # The same counter named twice: the lower limit binds.
    twice = function_limits(
        fn([ConcurrencyLimit(limit=4, key="event.data.user"), ConcurrencyLimit(limit=2, key="event.data.user")])
    )
    assert twice is not None and twice.claims(EVENT) == [SlotClaim("fn:app-fn:ada", 2)]


def test_an_invalid_key_expression_counts_the_whole_function() -> None:
    limits = function_limits(fn([ConcurrencyLimit(limit=3, key="event.data.(")]))
    assert limits is not None and limits.claims(EVENT) == [SlotClaim("fn:app-fn:", 3)]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("event.data.n", 7),
        ("event.data.n * 100", 600),  # clamped
        ("0 - event.data.n * 100", -600),
        ("1.5", 0),  # not an integer
        ("true", 0),
        ("event.data.user", 0),
        ("event.data.missing", 0),  # fails
    ],
)
def test_priority_is_whole_seconds_within_bounds(text: str, seconds: int) -> None:
    assert priority_seconds(Expression(text), EVENT) == seconds


def test_a_waiting_request_s_place_is_its_run_s_start_less_its_priority() -> None:
    limits = function_limits(fn(1, priority="event.data.n"))
    assert limits is not None
    assert limits.order(100_000, EVENT) == 93_000
    plain = function_limits(fn(1))
    assert plain is not None and plain.order(100_000, EVENT) == 100_000


def test_a_run_s_requests_reuse_its_event_s_claims_and_an_event_that_differs_does_not() -> None:
    from connect.executor import concurrency

    limits = function_limits(fn([ConcurrencyLimit(limit=2, key="event.data.user")], priority="event.data.n"))
    assert limits is not None
    first = limits.claims(EVENT)
    assert limits.claims(dict(EVENT)) == first == [SlotClaim("fn:app-fn:ada", 2)]
    assert limits.order(10_000, EVENT) == 10_000 - 7_000
    # The same id with other data (or none at all) is evaluated afresh.
    other = {**EVENT, "data": {"user": "bob", "n": -3}}
    assert limits.claims(other) == [SlotClaim("fn:app-fn:bob", 2)]
    assert limits.order(10_000, other) == 13_000
    assert limits.claims({**EVENT, "id": ""}) == first
    # What it remembers is bounded.
    for i in range(concurrency.MEMO_MAX + 10):
        limits.claims({**EVENT, "id": f"e{i}"})
    assert len(limits._memo) == concurrency.MEMO_MAX


@pytest.mark.parametrize(
    "value",
    ["ada", "", "é", "u" * 300, 7, -3, 0, 1.5, 1.0, 1e20, True, False, None, [], [1, "x"], {}, {"z": 1, "a": [None]}],
)
def test_a_key_that_names_a_field_reads_as_cel_would(value: object) -> None:
    from connect.executor import concurrency

    for data in ({"key": value}, {"key": {"inner": value}}, {"other": 1}, {"key": "text"}):
        event = {**EVENT, "data": data}
        for text in ("event.data.key", "event.data.key.inner", "event.name", "event.ts", "event.data"):
            path = tuple(text.split(".")[1:])
            assert concurrency._path_value(path, event) == concurrency._key_value(Expression(text), event)
    limits = function_limits(fn([ConcurrencyLimit(limit=1, key="event.data.key")]))
    assert limits is not None and limits.limits[0].path == ("data", "key")
    cel_only = function_limits(fn([ConcurrencyLimit(limit=1, key="event.data.key + 'x'")]))
    assert cel_only is not None and cel_only.limits[0].path is None
