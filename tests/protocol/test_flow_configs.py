"""Flow control at registration: every form the official SDKs send is read,
and a function whose flow control is unusable is refused with a reason naming
the option (`protocol.flow`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.durations import parse_duration
from protocol.flow import BATCH_SIZE_MAX, BATCH_SIZE_MIN, THROTTLE_PERIOD_MAX, THROTTLE_PERIOD_MIN
from protocol.payloads import FunctionConfig, decode_functions
from tests.fuzz_settings import fuzz
from tests.protocol.test_gateway_session import fn_config


def decode(**options: Any) -> tuple[FunctionConfig | None, str | None]:
    decoded = decode_functions(json.dumps([dict(fn_config(), **options)]).encode())
    if decoded.refused:
        return None, decoded.refused[0].reason
    return decoded.functions[0], None


BATCH = {"maxSize": 10, "timeout": "5s"}


@pytest.mark.parametrize(
    "options",
    [
        # concurrency: TypeScript's number, object and array; Python's array; `[]` = none.
        {"concurrency": 1},
        {"concurrency": {"limit": 2, "key": "event.data.user"}},
        {"concurrency": [{"limit": 10, "scope": "account", "key": '"openai"'}, {"limit": 2, "key": "event.data.u"}]},
        {"concurrency": [{"limit": 3, "scope": "env", "key": "event.data.t", "unused": None}]},
        {"concurrency": []},
        {"concurrency": None},
        # throttle: Python sends burst 1, TypeScript leaves it out; periods at both bounds.
        {"throttle": {"limit": 1, "period": "1s", "burst": 1, "key": None}},
        {"throttle": {"limit": 3, "period": "7d"}},
        {"throttle": {"limit": 3, "period": "1w", "burst": 0, "key": "event.data.k"}},
        {"throttle": {"limit": 3, "period": "1h30m"}},
        {"rateLimit": {"limit": 10, "period": "24h", "key": "event.data.k"}},
        {"rateLimit": {"limit": 1, "period": "1d"}},
        {"idempotency": "event.data.id"},
        {"debounce": {"period": "1s"}},
        {"debounce": {"period": "168h", "key": "event.data.k", "timeout": "5m"}},
        {"batchEvents": {"maxSize": 2, "timeout": "1s"}},
        {"batchEvents": {"maxSize": 1000, "timeout": "60s", "key": "event.data.k", "if": "event.data.ok"}},
        # batching with the options it may be combined with
        {"batchEvents": BATCH, "concurrency": 2, "throttle": {"limit": 1, "period": "1m"}, "priority": {}},
        {"batchEvents": BATCH, "cancel": [], "priority": {"run": None}},
        {"priority": {"run": "event.data.vip ? 120 : 0"}},
        {"priority": {}},
        {"singleton": {"mode": "skip"}},
        {"singleton": {"mode": "cancel", "key": "event.data.user"}},
        {"debounce": {"period": "30s"}, "singleton": {"mode": "skip"}, "rateLimit": {"limit": 1, "period": "1m"}},
    ],
)
def test_valid_flow_control_is_served(options: dict[str, Any]) -> None:
    fn, reason = decode(**options)
    assert reason is None
    assert fn is not None


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (
            {"concurrency": [{"limit": 1}, {"limit": 2}, {"limit": 3}]},
            "`concurrency` holds at most 2 limits, got 3",
        ),
        ({"concurrency": 0}, "`concurrency.limit` must be at least 1 (leave `concurrency` out for no limit), got 0"),
        ({"concurrency": [{"limit": 2}, {"limit": -1}]}, "`concurrency[1].limit` must be at least 1"),
        ({"concurrency": {"limit": 2, "scope": "env"}}, "`concurrency` with scope 'env' needs a `key`"),
        ({"concurrency": [{"limit": 2, "scope": "account"}]}, "`concurrency[0]` with scope 'account' needs a `key`"),
        ({"concurrency": [{"limit": 2, "key": " "}]}, "`concurrency[0].key` is empty"),
        ({"throttle": {"limit": 0, "period": "1m"}}, "`throttle.limit` must be at least 1, got 0"),
        ({"throttle": {"limit": 1, "period": "500ms"}}, "`throttle.period` must be from 1s to 7d, got '500ms'"),
        ({"throttle": {"limit": 1, "period": "8d"}}, "`throttle.period` must be from 1s to 7d, got '8d'"),
        ({"throttle": {"limit": 1, "period": "soon"}}, '`throttle.period` must be a duration such as "30s"'),
        ({"throttle": {"limit": 1, "period": "1m", "burst": -1}}, "`throttle.burst` must not be negative, got -1"),
        ({"throttle": {"limit": 1, "period": "1m", "key": ""}}, "`throttle.key` is empty"),
        ({"rateLimit": {"limit": 0, "period": "1h"}}, "`rateLimit.limit` must be at least 1, got 0"),
        ({"rateLimit": {"limit": 1, "period": "25h"}}, "`rateLimit.period` must be from 1s to 24h, got '25h'"),
        ({"rateLimit": {"limit": 1, "period": "2d"}}, "`rateLimit.period` must be from 1s to 24h, got '2d'"),
        ({"idempotency": ""}, "`idempotency` is empty"),
        ({"debounce": {"period": "0s"}}, "`debounce.period` must be from 1s to 7d, got '0s'"),
        ({"debounce": {"period": "169h"}}, "`debounce.period` must be from 1s to 7d, got '169h'"),
        ({"debounce": {"period": "1m", "timeout": "2w"}}, "`debounce.timeout` must be from 1s to 7d, got '2w'"),
        ({"debounce": {"period": "1m", "timeout": "x"}}, "`debounce.timeout` must be a duration"),
        ({"batchEvents": {"maxSize": 1, "timeout": "5s"}}, "`batchEvents.maxSize` must be from 2 to 1000, got 1"),
        ({"batchEvents": {"maxSize": 1001, "timeout": "5s"}}, "`batchEvents.maxSize` must be from 2 to 1000, got 1001"),
        ({"batchEvents": {"maxSize": 10}}, "`batchEvents.timeout` is required"),
        ({"batchEvents": {"maxSize": 10, "timeout": "900ms"}}, "`batchEvents.timeout` must be from 1s to 7d"),
        ({"batchEvents": {"maxSize": 10, "timeout": "5s", "if": ""}}, "`batchEvents.if` is empty"),
        ({"batchEvents": BATCH, "cancel": [{"event": "a/stop"}]}, "`batchEvents` cannot be combined with `cancel`"),
        ({"batchEvents": BATCH, "debounce": {"period": "5s"}}, "`batchEvents` cannot be combined with `debounce`"),
        ({"batchEvents": BATCH, "singleton": {"mode": "skip"}}, "`batchEvents` cannot be combined with `singleton`"),
        ({"batchEvents": BATCH, "priority": {"run": "1"}}, "`batchEvents` cannot be combined with `priority.run`"),
        (
            {"batchEvents": BATCH, "rateLimit": {"limit": 1, "period": "1m"}},
            "`batchEvents` cannot be combined with `rateLimit`",
        ),
        ({"batchEvents": BATCH, "idempotency": "event.data.id"}, "`batchEvents` cannot be combined with `idempotency`"),
        (
            {"batchEvents": BATCH, "debounce": {"period": "5s"}, "cancel": [{"event": "a/stop"}]},
            "`batchEvents` cannot be combined with `cancel`, `debounce`",
        ),
        ({"priority": {"run": "  "}}, "`priority.run` is empty"),
        ({"singleton": {"mode": "skip", "key": ""}}, "`singleton.key` is empty"),
        # shapes no SDK sends are refused by the schema, naming where
        ({"singleton": {"mode": "queue"}}, "at `$.singleton.mode`"),
        ({"throttle": {"limit": 1, "period": 60}}, "at `$.throttle.period`"),
        ({"batchEvents": {"timeout": "5s"}}, "missing required field `maxSize` - at `$.batchEvents`"),
    ],
)
def test_invalid_flow_control_is_refused_naming_the_option(options: dict[str, Any], reason: str) -> None:
    fn, refused = decode(**options)
    assert fn is None
    assert refused is not None and refused.startswith("invalid config: ")
    assert reason in refused


def test_only_the_bad_function_of_an_app_is_refused() -> None:
    good = dict(fn_config(fn="good"), throttle={"limit": 1, "period": "1m"})
    bad = dict(fn_config(fn="bad"), throttle={"limit": 1, "period": "1y"})
    decoded = decode_functions(json.dumps([good, bad]).encode())
    assert [fn.id for fn in decoded.functions] == ["app-good"]
    assert [r.id for r in decoded.refused] == ["app-bad"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("30s", 30.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
    ],
)
def test_durations_as_the_sdks_write_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "1", "1y", "1h 30m", "-1s", "1s!", "P1D"])
def test_what_is_not_a_duration(text: str) -> None:
    assert parse_duration(text) is None


_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=12))
_duration = st.one_of(
    st.builds(lambda n, u: f"{n}{u}", st.integers(0, 10**6), st.sampled_from(["ms", "s", "m", "h", "d", "w", "y", ""])),
    _scalar,
)
_option = st.fixed_dictionaries(
    {},
    optional={
        "limit": _scalar,
        "period": _duration,
        "timeout": _duration,
        "burst": _scalar,
        "key": _scalar,
        "scope": st.sampled_from(["fn", "env", "account", "app", None]),
        "maxSize": _scalar,
        "if": _scalar,
        "run": _scalar,
        "mode": st.sampled_from(["skip", "cancel", "queue", None]),
    },
)
_flow = st.fixed_dictionaries(
    {},
    optional={
        "concurrency": st.one_of(_scalar, _option, st.lists(_option, max_size=3)),
        "throttle": st.one_of(_option, _scalar),
        "rateLimit": _option,
        "debounce": _option,
        "batchEvents": _option,
        "idempotency": _scalar,
        "priority": _option,
        "singleton": _option,
        "cancel": st.just([{"event": "a/stop"}]) | st.just([]),
    },
)


@fuzz
@given(_flow)
def test_any_flow_control_is_served_or_refused_with_a_reason(options: dict[str, Any]) -> None:
    fn, reason = decode(**options)
    assert (fn is None) != (reason is None)
    if reason is not None:
        assert reason.startswith("invalid config: ")


@fuzz
@given(st.integers(0, 10 * 86400), st.integers(0, 2000))
def test_bounds_hold_at_every_value(seconds: int, size: int) -> None:
    _, throttled = decode(throttle={"limit": 1, "period": f"{seconds}s"})
    assert (throttled is None) == (THROTTLE_PERIOD_MIN <= seconds <= THROTTLE_PERIOD_MAX)
    _, batched = decode(batchEvents={"maxSize": size, "timeout": "5s"})
    assert (batched is None) == (BATCH_SIZE_MIN <= size <= BATCH_SIZE_MAX)
