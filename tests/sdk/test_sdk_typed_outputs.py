"""Typed outputs: `output_type=` on steps and functions, pydantic models in outputs and event data."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgspec
import pydantic
import pytest

from connect.sdk import Client, Context, ContextSync, Event, PydanticSerializer, TriggerEvent
from connect.sdk.execution import Outcome
from protocol.payloads import STATUS_DONE, STATUS_NOT_COMPLETED
from tests.sdk.conftest import FakeExecutor

pytestmark = pytest.mark.anyio
TRIGGER = TriggerEvent(event="test/go")
WHEN = datetime.datetime(2026, 12, 1, 8, 30, tzinfo=datetime.UTC)


class Kind(enum.Enum):
    BOOK = "book"


class Order(pydantic.BaseModel):
    id: int
    placed_at: datetime.datetime
    kind: Kind


@dataclasses.dataclass
class Line:
    sku: str
    qty: int


def order() -> Order:
    return Order(id=7, placed_at=WHEN, kind=Kind.BOOK)


async def test_a_typed_step_returns_its_type_when_run_and_on_every_replay(
    executor: Callable[..., FakeExecutor],
) -> None:
    client = Client("app")
    seen: list[Any] = []

    @client.create_function(fn_id="typed", trigger=TRIGGER)
    async def typed(ctx: Context) -> dict[str, Any]:
        got = await ctx.step.run("load", order, output_type=Order)
        lines = await ctx.step.run("lines", lambda: [Line("a", 1), Line("b", 2)], output_type=list[Line])
        seen.append((got, lines))
        return {"id": got.id, "qty": sum(line.qty for line in lines)}

    fake = executor(client, typed)
    call = await fake.run()
    assert call.body == {"id": 7, "qty": 3}
    # Stored as the official SDK's PydanticSerializer stores it (JSON mode).
    inngest = pytest.importorskip("inngest")
    official = inngest.PydanticSerializer()
    stored = [memo["data"] for memo in fake.steps.values()]
    assert stored == [official.serialize(order(), Order), official.serialize([Line("a", 1), Line("b", 2)], list[Line])]
    assert stored[0] == {"id": 7, "placed_at": "2026-12-01T08:30:00Z", "kind": "book"}
    # Every replay (three requests reach the return) saw the declared types.
    assert seen and all(got == order() and lines == [Line("a", 1), Line("b", 2)] for got, lines in seen)


async def test_a_typed_step_written_by_the_official_sdk_reads_back_as_the_type(
    invoke: Callable[..., Awaitable[Outcome]],
) -> None:
    inngest = pytest.importorskip("inngest")
    from connect.sdk.replay import hash_step_id

    client = Client("app")

    @client.create_function(fn_id="reads", trigger=TRIGGER)
    def reads(ctx: ContextSync) -> list[Any]:
        got = ctx.step.run("load", order, output_type=Order)
        return [type(got).__name__, got.placed_at.isoformat(), got.kind.value]

    data = inngest.PydanticSerializer().serialize(order(), Order)
    outcome = await invoke(client, reads, steps={hash_step_id("load", 0): {"data": data}})
    assert (outcome.status, json.loads(outcome.body)) == (STATUS_DONE, ["Order", "2026-12-01T08:30:00+00:00", "book"])


async def test_a_step_value_that_does_not_fit_its_type_fails_the_step(
    invoke: Callable[..., Awaitable[Outcome]],
) -> None:
    client = Client("app")

    @client.create_function(fn_id="misfit", trigger=TRIGGER, retries=0)
    async def misfit(ctx: Context) -> None:
        await ctx.step.run("load", lambda: {"id": "x"}, output_type=Order)

    outcome = await invoke(client, misfit, max_attempts=1)
    assert outcome.status == STATUS_NOT_COMPLETED
    [op] = json.loads(outcome.body)
    assert (op["op"], op["error"]["name"]) == ("StepFailed", "PydanticSerializationError")


async def test_a_function_output_type_serializes_the_return_and_types_invoke(
    executor: Callable[..., FakeExecutor], invoke: Callable[..., Awaitable[Outcome]]
) -> None:
    client = Client("app")

    @client.create_function(fn_id="child", trigger=TRIGGER, output_type=Order)
    async def child(ctx: Context) -> Order:
        return order()

    assert json.loads((await invoke(client, child)).body) == {
        "id": 7,
        "placed_at": "2026-12-01T08:30:00Z",
        "kind": "book",
    }

    got: list[Any] = []

    @client.create_function(fn_id="parent", trigger=TRIGGER)
    async def parent(ctx: Context) -> int:
        result = await ctx.step.invoke("call", function=child)
        got.append(result)
        return int(result.id)

    fake = executor(client, parent)
    fake.wait_results["call"] = {"id": 7, "placed_at": "2026-12-01T08:30:00Z", "kind": "book"}
    assert (await fake.run()).body == 7
    assert got == [order()]


async def test_pydantic_models_without_output_type_are_sent_as_json(invoke: Callable[..., Awaitable[Outcome]]) -> None:
    client = Client("app")

    @client.create_function(fn_id="plain", trigger=TRIGGER)
    async def plain(ctx: Context) -> dict[str, Any]:
        return {"order": order()}

    outcome = await invoke(client, plain)
    assert json.loads(outcome.body) == {"order": {"id": 7, "placed_at": "2026-12-01T08:30:00Z", "kind": "book"}}


async def test_pydantic_models_as_event_data_are_sent_as_json_and_read_back() -> None:
    posted: list[Any] = []

    def answer(request: httpx.Request) -> httpx.Response:
        posted.extend(json.loads(request.content))
        return httpx.Response(200, json={"ids": ["e1", "e2"], "status": 200})

    client = Client("app", http_transport=httpx.MockTransport(answer))
    await client.send([Event(name="shop/placed", data=order()), Event(name="shop/many", data={"orders": [order()]})])  # type: ignore[arg-type]
    assert posted[0]["data"] == {"id": 7, "placed_at": "2026-12-01T08:30:00Z", "kind": "book"}
    assert Order.model_validate(posted[1]["data"]["orders"][0]) == order()


def test_a_custom_serializer_replaces_pydantic() -> None:
    class Upper:
        def serialize(self, obj: object, typ: object) -> object:
            return str(obj).upper()

        def deserialize(self, obj: object, typ: object) -> object:
            return f"<{obj}>"

    from connect.sdk import testing

    client = testing.Client("app", serializer=Upper())

    @client.create_function(fn_id="custom", trigger=TRIGGER)
    def custom(ctx: ContextSync) -> str:
        return str(ctx.step.run("s", lambda: "abc", output_type=str))

    assert testing.trigger(custom, Event(name="test/go"), client).output == "<ABC>"
    assert isinstance(Client("app").serializer, PydanticSerializer)


async def test_a_typed_step_checkpointed_within_the_request_returns_its_type_at_once(
    payload: Callable[..., bytes],
) -> None:
    import asyncio

    from connect.sdk.execution import Invocation, execute

    client = Client("app")
    sent: list[Any] = []

    def checkpoint(op: Any) -> asyncio.Future[bool]:
        sent.append(json.loads(msgspec.json.encode(op))["data"])
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        answer.set_result(True)
        return answer

    @client.create_function(fn_id="checkpointed", trigger=TRIGGER)
    async def checkpointed(ctx: Context) -> list[str]:
        first = await ctx.step.run("load", order, output_type=Order)
        again = await ctx.step.run("copy", lambda: first.model_copy(update={"id": 8}), output_type=Order)
        return [type(first).__name__, type(again).__name__, str(again.id)]

    request = json.loads(payload())
    request["ctx"]["checkpoint_steps"] = True
    slug = checkpointed.fully_qualified_id("app")
    outcome = await execute(
        client, {slug: checkpointed}, Invocation(json.dumps(request).encode(), slug, "step", checkpoint=checkpoint)
    )
    assert (outcome.status, json.loads(outcome.body)) == (STATUS_DONE, ["Order", "Order", "8"])
    assert sent == [
        {"id": 7, "placed_at": "2026-12-01T08:30:00Z", "kind": "book"},
        {"id": 8, "placed_at": "2026-12-01T08:30:00Z", "kind": "book"},
    ]
