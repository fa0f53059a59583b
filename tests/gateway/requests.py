"""The discovery request the gateway tests dispatch: a fresh run's first request for one function."""

from __future__ import annotations

from typing import Any

from connect.dispatch import StepRequest
from protocol.ids import new_ulid
from protocol.payloads import Event, ExecutorRequest, RequestContext, RequestStack, json_encoder


def discovery_request(
    app_name: str,
    slug: str,
    event_name: str,
    *,
    data: dict[str, Any] | None = None,
    offer_checkpoints: bool = False,
    **options: Any,
) -> StepRequest:
    """`offer_checkpoints` sets `ctx.checkpoint_steps`; `options` go to `StepRequest`."""
    run_id = new_ulid()
    event = Event(name=event_name, data=data or {}, id=new_ulid(), ts=1767225600000)
    ctx = RequestContext(
        run_id=run_id,
        attempt=0,
        stack=RequestStack(stack=[], current=0),
        fn_id=slug,
        step_id="step",
        max_attempts=1,
        checkpoint_steps=offer_checkpoints,
    )
    payload = ExecutorRequest(event=event, events=[event], steps={}, ctx=ctx, use_api=False, version=-1)
    return StepRequest(
        request_id=new_ulid(),
        run_id=run_id,
        app_name=app_name,
        function_slug=slug,
        step_id="step",
        payload=json_encoder.encode(payload),
        fresh=True,
        **options,
    )
