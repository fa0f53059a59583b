"""Unit tests of `official_app` written for the official SDK's `inngest.experimental.mocked`.

`tests/ported/test_porting.py` runs them on the official SDK as they are, and on
`connect.sdk.testing` with only the imports rewritten.
"""

import inngest
import official_app
from inngest.experimental import mocked

client = mocked.Inngest(app_id="ported-app", is_production=False, serializer=inngest.PydanticSerializer())


def test_checkout_runs_its_steps_inline() -> None:
    res = mocked.trigger(
        official_app.checkout,
        inngest.Event(name="ported/checkout", data={"order_id": 7}),
        client,
    )
    assert res.status is mocked.Status.COMPLETED
    assert res.error is None
    assert res.output == {"order_id": 7, "total_cents": 1350, "shipment_ids": ["00000000000000000000000000"]}


def test_checkout_with_a_stubbed_step() -> None:
    order = {"id": 8, "items": ["lamp"], "placed_at": "2026-12-02T10:00:00Z"}
    res = mocked.trigger(
        official_app.checkout,
        inngest.Event(name="ported/checkout", data={"order_id": 8}),
        client,
        step_stubs={"load-order": order, "price-lamp": 1},
    )
    assert res.output == {"order_id": 8, "total_cents": 1, "shipment_ids": ["00000000000000000000000000"]}


def test_ship_is_a_sync_function() -> None:
    res = mocked.trigger(
        official_app.ship,
        inngest.Event(name="ported/ship", data={"id": 3, "items": ["pen"], "placed_at": "2026-12-01T09:30:00Z"}),
        client,
    )
    assert res.output == {
        "label": "order 3: 1 items",
        "packing": ["box", "tape"],
        "placed_at": "2026-12-01T09:30:00+00:00",
        "audited": True,  # the function's middleware runs here too
    }


def test_an_invoke_needs_a_stub_and_returns_the_functions_output_type() -> None:
    try:
        mocked.trigger(official_app.reorder, inngest.Event(name="ported/reorder", data={"order_id": 1}), client)
    except Exception as err:
        assert "checkout-again" in str(err)
    else:
        raise AssertionError("an unstubbed invoke must raise")
    res = mocked.trigger(
        official_app.reorder,
        inngest.Event(name="ported/reorder", data={"order_id": 1}),
        client,
        step_stubs={"checkout-again": {"order_id": 1, "total_cents": 99, "shipment_ids": []}},
    )
    assert res.output == {"type": "Receipt", "order_id": 1, "total": 99}


def test_a_failing_function_reports_the_error() -> None:
    res = mocked.trigger(
        official_app.checkout,
        inngest.Event(name="ported/checkout", data={"order_id": 1}),
        client,
        step_stubs={"load-order": {"id": 1, "items": ["unknown"], "placed_at": "2026-12-01T00:00:00Z"}},
    )
    assert res.status is mocked.Status.FAILED
    assert res.output is None
    assert res.error is not None
