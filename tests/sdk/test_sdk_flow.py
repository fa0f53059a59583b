"""Flow-control options in our SDK: named and registered as the official Python
SDK names and registers them, checked when the function is defined with errors
naming the option, and within the bounds the platform accepts at registration."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pydantic_core
import pytest

import connect
from connect.sdk import (
    Batch,
    Cancel,
    Client,
    Concurrency,
    Context,
    Debounce,
    FunctionConfigError,
    Priority,
    RateLimit,
    Singleton,
    Step,
    Throttle,
    TriggerEvent,
    functions_json,
)
from protocol.payloads import decode_functions

inngest = pytest.importorskip("inngest")
comm_lib = pytest.importorskip("inngest._internal.comm_lib")
transforms = pytest.importorskip("inngest._internal.transforms")

S = datetime.timedelta(seconds=1)
FLOW_FIELDS = (
    "concurrency",
    "throttle",
    "rateLimit",
    "debounce",
    "batchEvents",
    "idempotency",
    "priority",
    "singleton",
)


async def handler(ctx: Context, step: Step) -> None:
    return None


# Each function is written twice, once per SDK, with the same options: `sdk` is
# our `connect.sdk` or the official `inngest` package (same type names and fields).
FUNCTIONS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "keyed": lambda sdk: {
        "concurrency": [
            sdk.Concurrency(limit=5),
            sdk.Concurrency(limit=2, key="event.data.user_id", scope="account"),
        ],
        "throttle": sdk.Throttle(limit=3, period=datetime.timedelta(minutes=1), key="event.data.k", burst=2),
        "rate_limit": sdk.RateLimit(limit=10, period=datetime.timedelta(hours=24), key="event.data.k"),
        "debounce": sdk.Debounce(period=30 * S, key="event.data.k", timeout=datetime.timedelta(minutes=5)),
        "idempotency": "event.data.order_id",
        "priority": sdk.Priority(run="event.data.vip ? 120 : -60"),
        "singleton": sdk.Singleton(mode="skip", key="event.data.user_id"),
        "cancel": [sdk.Cancel(event="shop/stop")],
    },
    "defaults": lambda sdk: {
        "concurrency": [sdk.Concurrency(limit=1)],
        "throttle": sdk.Throttle(limit=1, period=2000),  # burst left to its default
        "rate_limit": sdk.RateLimit(limit=1, period=3_600_000),
        "debounce": sdk.Debounce(period=datetime.timedelta(days=7)),
        "singleton": sdk.Singleton(mode="cancel"),
    },
    "shared-key": lambda sdk: {"concurrency": [sdk.Concurrency(limit=4, key='"openai"', scope="env")]},
    "batched": lambda sdk: {
        "batch_events": sdk.Batch(max_size=100, timeout=5 * S, key="event.data.tenant", if_exp="event.data.ok"),
        "concurrency": [sdk.Concurrency(limit=2)],
        "throttle": sdk.Throttle(limit=10, period=60_000, burst=None),
    },
    "batched-plain": lambda sdk: {"batch_events": sdk.Batch(max_size=2, timeout=1000)},
}


def ours(name: str) -> dict[str, Any]:
    fn = Client("shop").create_function(fn_id=name, trigger=TriggerEvent(event="shop/go"), **FUNCTIONS[name](connect))(
        handler
    )
    [config] = json.loads(functions_json("shop", [fn]))
    return dict(config)


def theirs(name: str) -> dict[str, Any]:
    client = inngest.Inngest(app_id="shop", is_production=False)
    fn = client.create_function(fn_id=name, trigger=inngest.TriggerEvent(event="shop/go"), **FUNCTIONS[name](inngest))(
        lambda ctx: None
    )
    # As the official connect handshake serializes them: nulls left out.
    [config] = json.loads(
        pydantic_core.to_json(comm_lib.get_function_configs("wss://connect", {fn.id: fn}), exclude_none=True)
    )
    return dict(config)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_flow_control_registers_as_the_official_sdk_registers_it(name: str) -> None:
    mine, reference = ours(name), theirs(name)
    for field in FLOW_FIELDS:
        assert mine.get(field) == reference.get(field), field
    # ... and the rest of the config too (the official SDK also sends `concurrency: []` for none)
    assert mine == {k: v for k, v in reference.items() if v != []}


def test_our_configs_are_served_by_the_platform() -> None:
    for name in FUNCTIONS:
        decoded = decode_functions(json.dumps([ours(name)]).encode())
        assert decoded.refused == [], name
        assert decoded.functions[0].id == f"shop-{name}"


def test_every_option_is_kept_on_the_function() -> None:
    throttle = Throttle(limit=1, period=1000)
    fn = Client("a").create_function(
        fn_id="f", trigger=TriggerEvent(event="e"), throttle=throttle, idempotency="event.data.id"
    )(handler)
    assert fn.options.throttle is throttle and fn.options.idempotency == "event.data.id"
    assert fn.options.concurrency == () and fn.options.batch_events is None


def test_a_function_without_flow_control_registers_none() -> None:
    fn = Client("a").create_function(fn_id="f", trigger=TriggerEvent(event="e"))(handler)
    [config] = json.loads(functions_json("a", [fn]))
    assert not set(config) & set(FLOW_FIELDS)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Concurrency(limit=0), "Concurrency.limit: must be at least 1, got 0"),
        (lambda: Concurrency(limit=True), "Concurrency.limit: must be an int, got True"),
        (lambda: Concurrency(limit=2, scope="env"), "Concurrency.key: is required with scope 'env'"),
        (lambda: Concurrency(limit=2, scope="account"), "Concurrency.key: is required with scope 'account'"),
        (lambda: Concurrency(limit=2, scope="app"), "Concurrency.scope: must be one of account, env, fn, got 'app'"),
        (
            lambda: Concurrency(limit=2, key="event.data.u =="),
            "Concurrency.key: is not a valid CEL expression (syntax error at character 14), got 'event.data.u =='",
        ),
        (lambda: Concurrency(limit=2, key=""), "Concurrency.key: must be a non-empty CEL expression or None, got ''"),
        (lambda: Throttle(limit=0, period=1000), "Throttle.limit: must be at least 1, got 0"),
        (lambda: Throttle(limit=1, period=500), "Throttle.period: must be a whole number of seconds, got 500"),
        (lambda: Throttle(limit=1, period=0), "Throttle.period: must be from 1s to 7d, got 0"),
        (lambda: Throttle(limit=1, period=8 * 86400 * S), "Throttle.period: must be from 1s to 7d"),
        (lambda: Throttle(limit=1, period="1m"), "Throttle.period: must be int milliseconds or a timedelta, got '1m'"),
        (lambda: Throttle(limit=1, period=1000, burst=-1), "Throttle.burst: must be at least 0, got -1"),
        (lambda: Throttle(limit=1, period=1000, key="a b"), "Throttle.key: is not a valid CEL expression"),
        (lambda: RateLimit(limit=0, period=1000), "RateLimit.limit: must be at least 1, got 0"),
        (lambda: RateLimit(limit=1, period=25 * 3600 * S), "RateLimit.period: must be from 1s to 24h"),
        (lambda: Debounce(period=999), "Debounce.period: must be a whole number of seconds, got 999"),
        (lambda: Debounce(period=8 * 86400 * S), "Debounce.period: must be from 1s to 7d"),
        (lambda: Debounce(period=1000, timeout=15 * 86400 * S), "Debounce.timeout: must be from 1s to 7d"),
        (lambda: Debounce(period=1000, key="("), "Debounce.key: is not a valid CEL expression"),
        (lambda: Batch(max_size=1, timeout=1000), "Batch.max_size: must be from 2 to 1000, got 1"),
        (lambda: Batch(max_size=1001, timeout=1000), "Batch.max_size: must be from 2 to 1000, got 1001"),
        (lambda: Batch(max_size=10), "Batch.timeout: is required"),
        (lambda: Batch(max_size=10, timeout=0.5 * S), "Batch.timeout: must be a whole number of seconds"),
        (lambda: Batch(max_size=10, timeout=1000, if_exp="event.data.ok &&"), "Batch.if_exp: is not a valid CEL"),
        (lambda: Priority(run="event.data.p +"), "Priority.run: is not a valid CEL expression"),
        (lambda: Priority(run=5), "Priority.run: must be a non-empty CEL expression or None, got 5"),
        (lambda: Singleton(mode="queue"), "Singleton.mode: must be 'skip' or 'cancel', got 'queue'"),
        (lambda: Singleton(mode="skip", key="}"), "Singleton.key: is not a valid CEL expression"),
    ],
)
def test_a_bad_option_value_is_refused_naming_its_field(make: Callable[[], object], message: str) -> None:
    with pytest.raises(FunctionConfigError, match=f"^{re.escape(message)}"):
        make()


def test_singleton_mode_is_required_and_keyword_only() -> None:
    with pytest.raises(TypeError):
        Singleton()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Singleton("event.data.k", "skip")  # type: ignore[misc]
    assert Singleton("event.data.k", mode="skip").key == "event.data.k"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"concurrency": [Concurrency(limit=1), Concurrency(limit=2), Concurrency(limit=3)]},
            "greet: concurrency: at most 2 limits, got 3",
        ),
        (
            {"concurrency": Concurrency(limit=1)},
            "greet: concurrency: must be a list of Concurrency (one or two limits), got one Concurrency",
        ),
        ({"concurrency": [{"limit": 1}]}, "greet: concurrency[0]: must be a Concurrency, got dict"),
        ({"throttle": {"limit": 1, "period": "1m"}}, "greet: throttle: must be a Throttle, got dict"),
        ({"rate_limit": Throttle(limit=1, period=1000)}, "greet: rate_limit: must be a RateLimit, got Throttle"),
        ({"debounce": 5000}, "greet: debounce: must be a Debounce, got int"),
        ({"batch_events": 10}, "greet: batch_events: must be a Batch, got int"),
        ({"priority": "event.data.p"}, "greet: priority: must be a Priority, got str"),
        ({"singleton": "skip"}, "greet: singleton: must be a Singleton, got str"),
        ({"idempotency": ""}, "greet: idempotency: must be a non-empty string, got ''"),
        ({"idempotency": "event.data.id ="}, "greet: idempotency: is not a valid CEL expression"),
        (
            {"batch_events": Batch(max_size=5, timeout=1000), "debounce": Debounce(period=1000)},
            "greet: batch_events: cannot be combined with debounce",
        ),
        (
            {"batch_events": Batch(max_size=5, timeout=1000), "cancel": [Cancel(event="x")]},
            "greet: batch_events: cannot be combined with cancel",
        ),
        (
            {"batch_events": Batch(max_size=5, timeout=1000), "singleton": Singleton(mode="skip")},
            "greet: batch_events: cannot be combined with singleton",
        ),
        (
            {
                "batch_events": Batch(max_size=5, timeout=1000),
                "priority": Priority(run="1"),
                "singleton": Singleton(mode="skip"),
            },
            "greet: batch_events: cannot be combined with singleton, priority.run",
        ),
        (
            {"batch_events": Batch(max_size=5, timeout=1000), "rate_limit": RateLimit(limit=1, period=60_000)},
            "greet: batch_events: cannot be combined with rate_limit",
        ),
        (
            {"batch_events": Batch(max_size=5, timeout=1000), "idempotency": "event.data.id"},
            "greet: batch_events: cannot be combined with idempotency",
        ),
    ],
)
def test_a_bad_flow_option_of_a_function_is_refused_naming_it(options: dict[str, Any], message: str) -> None:
    with pytest.raises(FunctionConfigError, match=f"^{re.escape(message)}"):
        Client("shop").create_function(fn_id="greet", trigger=TriggerEvent(event="a"), **options)(handler)


def test_batching_goes_with_a_priority_that_has_no_run() -> None:
    Client("shop").create_function(
        fn_id="greet",
        trigger=TriggerEvent(event="a"),
        batch_events=Batch(max_size=5, timeout=1000),
        priority=Priority(),
    )(handler)


@pytest.mark.parametrize(
    ("make", "wire", "low", "high"),
    [
        (lambda d: Throttle(limit=1, period=d), lambda t: {"throttle": {"limit": 1, "period": t}}, 1, 7 * 86400),
        (lambda d: RateLimit(limit=1, period=d), lambda t: {"rateLimit": {"limit": 1, "period": t}}, 1, 86400),
        (lambda d: Debounce(period=d), lambda t: {"debounce": {"period": t}}, 1, 7 * 86400),
        (
            lambda d: Debounce(period=1000, timeout=d),
            lambda t: {"debounce": {"period": "1s", "timeout": t}},
            1,
            7 * 86400,
        ),
        (lambda d: Batch(max_size=2, timeout=d), lambda t: {"batchEvents": {"maxSize": 2, "timeout": t}}, 1, 7 * 86400),
    ],
    ids=["throttle", "rate_limit", "debounce", "debounce-timeout", "batch"],
)
def test_the_sdk_and_the_platform_draw_the_same_bounds(
    make: Callable[[datetime.timedelta], object], wire: Callable[[str], dict[str, Any]], low: int, high: int
) -> None:
    """At each bound and one second beyond it, the SDK and registration decide alike."""
    for seconds in (low - 1, low, high, high + 1):
        value = datetime.timedelta(seconds=seconds)
        try:
            make(value)
            sdk_accepts = True
        except FunctionConfigError:
            sdk_accepts = False
        text = transforms.to_duration_str(value)  # as the official SDK writes it; below 1 s it cannot
        registers = (
            not isinstance(text, Exception)
            and not decode_functions(json.dumps([dict(BASE_CONFIG, **wire(text))]).encode()).refused
        )
        assert sdk_accepts == registers == (low <= seconds <= high), seconds


BASE_CONFIG: dict[str, Any] = {
    "id": "a-f",
    "triggers": [{"event": "e"}],
    "steps": {"step": {"id": "step", "name": "step", "runtime": {"type": "ws", "url": "wss://connect"}}},
}


def test_cel_is_loaded_only_for_a_function_with_an_expression() -> None:
    """Loading the CEL parser costs a worker a noticeable part of a second at start."""
    code = (
        "import sys\n"
        "from connect import Client, Concurrency, Throttle, TriggerEvent\n"
        "client = Client('a')\n"
        "async def h(ctx, step): ...\n"
        "client.create_function(fn_id='f', trigger=TriggerEvent(event='e'), concurrency=[Concurrency(limit=2)],\n"
        "                       throttle=Throttle(limit=1, period=1000))(h)\n"
        "print('celpy' in sys.modules)\n"
        "Concurrency(limit=2, key='event.data.k')\n"
        "print('celpy' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]
