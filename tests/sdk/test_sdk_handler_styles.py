"""Both handler styles: `f(ctx)` with `ctx.step` / `ctx.group`, and `f(ctx, step)`; async and sync."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from connect.sdk import (
    Client,
    Context,
    ContextSync,
    FunctionConfigError,
    Group,
    GroupSync,
    Step,
    StepSync,
    TriggerEvent,
)
from tests.sdk.conftest import FakeExecutor

pytestmark = pytest.mark.anyio
TRIGGER = TriggerEvent(event="test/go")


async def test_an_async_handler_with_one_parameter_gets_its_steps_on_ctx(
    executor: Callable[..., FakeExecutor],
) -> None:
    client = Client("app")
    seen: list[Any] = []

    @client.create_function(fn_id="one-param", trigger=TRIGGER)
    async def handler(ctx: Context) -> dict[str, Any]:
        seen.append((type(ctx), type(ctx.step), type(ctx.group)))
        first = await ctx.step.run("first", lambda: 20)
        second = await ctx.step.run("second", lambda: first + 1)
        return {"value": second, "function_id": ctx.function_id, "run_id": ctx.run_id}

    assert handler.takes_step is False
    call = await executor(client, handler).run()
    assert call.body == {"value": 21, "function_id": "one-param", "run_id": "run-1"}
    assert set(seen) == {(Context, Step, Group)}


async def test_an_async_handler_with_two_parameters_gets_the_same_step_twice(
    executor: Callable[..., FakeExecutor],
) -> None:
    client = Client("app")
    same: list[bool] = []

    @client.create_function(fn_id="two-params", trigger=TRIGGER)
    async def handler(ctx: Context, step: Step) -> int:
        same.append(step is ctx.step)
        return await step.run("only", lambda: 5)

    assert handler.takes_step is True
    assert (await executor(client, handler).run()).body == 5
    assert same and all(same)


@pytest.mark.parametrize("style", ["ctx", "ctx-step"])
async def test_sync_handlers_get_a_context_sync_in_both_styles(
    executor: Callable[..., FakeExecutor], style: str
) -> None:
    client = Client("app")
    seen: list[Any] = []

    def body(ctx: ContextSync) -> dict[str, Any]:
        seen.append((type(ctx), type(ctx.step), type(ctx.group)))
        value = ctx.step.run("add", lambda: int(ctx.event.data["n"]) + 1 if "n" in ctx.event.data else 1)
        return {"value": value, "function_id": ctx.function_id}

    if style == "ctx":

        def handler(ctx: ContextSync) -> dict[str, Any]:
            return body(ctx)
    else:

        def handler(ctx: ContextSync, step: StepSync) -> dict[str, Any]:  # type: ignore[misc]
            assert step is ctx.step
            return body(ctx)

    fn = client.create_function(fn_id=f"sync-{style}", trigger=TRIGGER)(handler)
    assert fn.is_async is False
    assert (await executor(client, fn).run()).body == {"value": 1, "function_id": f"sync-{style}"}
    assert set(seen) == {(ContextSync, StepSync, GroupSync)}


async def test_ctx_group_parallel_runs_the_steps_as_step_parallel_does() -> None:
    from connect.sdk import testing

    client = testing.Client("app")

    @client.create_function(fn_id="fan-out", trigger=TRIGGER)
    async def fan_out(ctx: Context) -> list[int]:
        results = await ctx.group.parallel(
            tuple((lambda i=i: ctx.step.run(f"part-{i}", lambda: i * i)) for i in range(4))
        )
        return list(results)

    @client.create_function(fn_id="fan-out-sync", trigger=TRIGGER)
    def fan_out_sync(ctx: ContextSync) -> list[int]:
        return list(ctx.group.parallel(tuple((lambda i=i: ctx.step.run(f"part-{i}", lambda: i + 1)) for i in range(3))))

    from connect.sdk.events import Event

    assert testing.trigger(fan_out, Event(name="test/go"), client).output == [0, 1, 4, 9]
    assert testing.trigger(fan_out_sync, Event(name="test/go"), client).output == [1, 2, 3]


def test_the_style_is_told_by_the_parameters() -> None:
    client = Client("app")

    async def defaulted(ctx: Context, step: Step | None = None) -> None:
        return None

    async def star(*args: Any) -> None:
        return None

    async def keyword_only(ctx: Context, *, extra: int = 1) -> None:
        return None

    async def three(ctx: Context, step: Step, more: int) -> None:
        return None

    make = client.create_function
    assert make(fn_id="a", trigger=TRIGGER)(defaulted).takes_step is True
    assert make(fn_id="b", trigger=TRIGGER)(star).takes_step is True
    assert make(fn_id="c", trigger=TRIGGER)(keyword_only).takes_step is False
    with pytest.raises(FunctionConfigError, match=r"^d: the handler must accept one positional argument \(ctx\)"):
        make(fn_id="d", trigger=TRIGGER)(three)  # type: ignore[arg-type]


async def test_an_on_failure_handler_may_use_either_style(executor: Callable[..., FakeExecutor]) -> None:
    client = Client("app")

    async def on_failure(ctx: Context) -> str:
        return await ctx.step.run("report", lambda: f"{ctx.function_id} saw {ctx.event.name}")

    @client.create_function(fn_id="fails", trigger=TRIGGER, on_failure=on_failure)
    async def fails(ctx: Context) -> None:
        raise RuntimeError("no")

    assert fails.on_failure is not None
    call = await executor(client, fails.on_failure).run()
    assert call.body == "fails-failure saw test/go"
