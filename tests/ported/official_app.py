"""An app written for the official Inngest Python SDK (inngest 0.5.19), as its users write it:
both handler styles, typed outputs, a typed invoke and a function's middleware.

`tests/ported/test_porting.py` runs this file twice against a real `connect dev`: as it is, on
the official SDK, and with only its imports rewritten (`import inngest` becomes
`import connect as inngest`), on this platform's SDK. Its configuration comes from the
environment only (INNGEST_DEV, INNGEST_BASE_URL, INNGEST_SIGNING_KEY, ...).
"""

import datetime

import inngest
import pydantic

client = inngest.Inngest(app_id="ported-app", serializer=inngest.PydanticSerializer())

PRICES = {"book": 1200, "pen": 150, "lamp": 4000}


class Order(pydantic.BaseModel):
    id: int
    items: list[str]
    placed_at: datetime.datetime


class Receipt(pydantic.BaseModel):
    order_id: int
    total_cents: int
    shipment_ids: list[str]


def load_order(order_id: int) -> Order:
    placed_at = datetime.datetime(2026, 12, 1, 9, 30, tzinfo=datetime.UTC)
    return Order(id=order_id, items=["book", "pen"], placed_at=placed_at)


def price_of(item: str) -> int:
    return PRICES[item]


@client.create_function(
    fn_id="checkout",
    trigger=inngest.TriggerEvent(event="ported/checkout"),
    output_type=Receipt,
    retries=2,
)
async def checkout(ctx: inngest.Context) -> Receipt:
    order = await ctx.step.run("load-order", load_order, ctx.event.data["order_id"], output_type=Order)
    # A memoized step returns the declared type on every replay, not a dict.
    assert isinstance(order, Order) and isinstance(order.placed_at, datetime.datetime)
    prices = await ctx.group.parallel(
        tuple((lambda item=item: ctx.step.run(f"price-{item}", price_of, item)) for item in order.items)
    )
    await ctx.step.sleep("settle", datetime.timedelta(milliseconds=300))
    shipment_ids = await ctx.step.send_event(
        "ship",
        [inngest.Event(name="ported/ship", data=order.model_dump(mode="json"))],
    )
    return Receipt(order_id=order.id, total_cents=sum(prices), shipment_ids=shipment_ids)


class Audit(inngest.MiddlewareSync):
    """Marks the function's own result (not its steps') as audited."""

    def transform_output(self, result: inngest.TransformOutputResult) -> None:
        if result.step is None and isinstance(result.output, dict):
            result.output = {**result.output, "audited": True}


@client.create_function(fn_id="ship", trigger=inngest.TriggerEvent(event="ported/ship"), middleware=[Audit])
def ship(ctx: inngest.ContextSync) -> dict[str, object]:
    order = Order.model_validate(ctx.event.data)
    label = ctx.step.run("label", lambda: f"order {order.id}: {len(order.items)} items")
    packing = ctx.group.parallel(
        (
            lambda: ctx.step.run("box", lambda: "box"),
            lambda: ctx.step.run("tape", lambda: "tape"),
        )
    )
    return {"label": label, "packing": list(packing), "placed_at": order.placed_at.isoformat()}


@client.create_function(fn_id="reorder", trigger=inngest.TriggerEvent(event="ported/reorder"))
async def reorder(ctx: inngest.Context) -> dict[str, object]:
    receipt = await ctx.step.invoke(
        "checkout-again",
        function=checkout,
        data={"order_id": ctx.event.data["order_id"]},
    )
    return {"type": type(receipt).__name__, "order_id": receipt.order_id, "total": receipt.total_cents}


functions = [checkout, ship, reorder]
