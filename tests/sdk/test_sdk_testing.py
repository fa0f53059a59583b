"""`connect.sdk.testing`: functions run without a server, steps inline or stubbed (the official `mocked` shapes)."""

from __future__ import annotations

from typing import Any

import pytest

from connect.sdk import Context, ContextSync, Event, NonRetriableError, StepError, TriggerEvent
from connect.sdk import testing as mocked

TRIGGER = TriggerEvent(event="shop/order.placed")
client = mocked.Inngest(app_id="shop", is_production=False)
bodies: list[str] = []


@client.create_function(fn_id="place-order", trigger=TRIGGER)
async def place_order(ctx: Context) -> dict[str, Any]:
    rate = await ctx.step.run("fetch-rate", lambda: bodies.append("fetch-rate") or 2.0)
    await ctx.step.sleep("cool-off", 60_000)
    paid = await ctx.step.wait_for_event("wait-for-payment", event="shop/paid", timeout=3_600_000)
    ids = await ctx.step.send_event("notify", Event(name="shop/notified", data={}))
    total = await ctx.step.run("total", lambda: bodies.append("total") or ctx.event.data["amount"] * rate)
    return {"total": total, "paid": None if paid is None else paid.data, "ids": ids}


def setup_function() -> None:
    bodies.clear()


def test_steps_run_inline_and_a_wait_times_out_with_the_timeout_stub() -> None:
    res = mocked.trigger(
        place_order,
        Event(name="shop/order.placed", data={"amount": 3}),
        client,
        step_stubs={"wait-for-payment": mocked.Timeout},
    )
    assert res.status is mocked.Status.COMPLETED
    assert res.error is None
    assert res.output == {"total": 6.0, "paid": None, "ids": ["0" * 26]}
    assert bodies == ["fetch-rate", "total"]  # each body once: later requests replay them


def test_a_stubbed_step_does_not_run_and_returns_the_stub() -> None:
    res = mocked.trigger(
        place_order,
        Event(name="shop/order.placed", data={"amount": 3}),
        client,
        step_stubs={"fetch-rate": 10, "wait-for-payment": Event(name="shop/paid", data={"by": "card"})},
    )
    assert res.output == {"total": 30, "paid": {"by": "card"}, "ids": ["0" * 26]}
    assert bodies == ["total"]


def test_a_wait_without_a_stub_raises() -> None:
    with pytest.raises(mocked.UnstubbedStepError, match="step wait-for-payment is not stubbed"):
        mocked.trigger(place_order, Event(name="shop/order.placed", data={"amount": 1}), client)


def test_a_failing_step_is_retried_then_fails_the_run() -> None:
    attempts: list[int] = []

    @client.create_function(fn_id="flaky", trigger=TRIGGER, retries=2)
    def flaky(ctx: ContextSync) -> str:
        def body() -> str:
            attempts.append(ctx.attempt)
            if len(attempts) < 3:
                raise ValueError(f"try {len(attempts)}")
            return "ok"

        return ctx.step.run("flaky", body)

    assert mocked.trigger(flaky, Event(name="shop/order.placed"), client).output == "ok"
    assert attempts == [0, 1, 2]

    attempts.clear()

    @client.create_function(fn_id="broken", trigger=TRIGGER, retries=1)
    async def broken(ctx: Context) -> None:
        await ctx.step.run("broken", lambda: attempts.append(ctx.attempt) or 1 / 0)

    res = mocked.trigger(broken, Event(name="shop/order.placed"), client)
    assert res.status is mocked.Status.FAILED
    assert isinstance(res.error, StepError) and "division by zero" in str(res.error)
    assert attempts == [0, 1]


def test_a_non_retriable_error_fails_at_once_with_the_exception() -> None:
    calls: list[int] = []

    @client.create_function(fn_id="refuse", trigger=TRIGGER)
    async def refuse(ctx: Context) -> None:
        calls.append(ctx.attempt)
        raise NonRetriableError("no such order")

    res = mocked.trigger(refuse, [Event(name="shop/order.placed")], client)
    assert (res.status, type(res.error), str(res.error), res.output) == (
        mocked.Status.FAILED,
        NonRetriableError,
        "no such order",
        None,
    )
    assert calls == [0]


@pytest.mark.anyio
async def test_trigger_works_from_inside_a_running_event_loop() -> None:
    res = mocked.trigger(
        place_order,
        Event(name="shop/order.placed", data={"amount": 1}),
        client,
        step_stubs={"wait-for-payment": mocked.Timeout},
    )
    assert res.output["total"] == 2.0  # type: ignore[index]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
