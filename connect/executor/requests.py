"""The JSON body of one call request, built from a run's stored state.

The shape is the one official SDKs parse strictly: `event` and `events`
always present (`events` is the triggering event alone, or for a run a batch
started every event of the batch in order, `event` being the first; the SDKs
give it to the function as `ctx.events`), `steps` an object of memos keyed by hashed step id, `ctx.stack`
an object, `ctx.max_attempts` set so the SDK can tell StepError from
StepFailed, and `use_api` false (large run state is not offloaded; see
`MAX_REQUEST_PAYLOAD_BYTES`). `ctx.fn_id` and `ctx.qi_id` are set only when
the request offers checkpoints (see `connect/api/checkpoints.py`).

Memos are kept as raw JSON (`msgspec.Raw`) and spliced in unchanged, so a
request costs one encode of the envelope rather than a decode and an encode
of every stored result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from connect.store.base import PendingRequest, RunRecord
from protocol.payloads import Event, ExecutorRequest, RequestContext, RequestStack, json_encoder


def build_request(
    run: RunRecord,
    pending: PendingRequest,
    event: Event,
    memos: Mapping[str, msgspec.Raw],
    *,
    checkpoint_steps: bool = False,
    events: Sequence[Event] | None = None,
) -> bytes:
    """The request body for one of the run's pending requests; `events` are
    the run's batch when a batch started it."""
    stack = list(memos)
    request = ExecutorRequest(
        event=event,
        events=list(events) if events else [event],
        steps=dict(memos),
        ctx=RequestContext(
            run_id=run.run_id,
            attempt=pending.attempt,
            disable_immediate_execution=run.disable_immediate_execution,
            use_api=False,
            stack=RequestStack(stack=stack, current=len(stack)),
            # The TypeScript SDK checkpoints (`/v1/checkpoint/{run_id}/async`)
            # exactly when `fn_id` is set: only requests that offer it say so.
            fn_id=run.function_id if checkpoint_steps else "",
            step_id=pending.step_id,
            max_attempts=run.max_attempts,
            checkpoint_steps=checkpoint_steps,
            qi_id=pending.request_id if checkpoint_steps else "",
        ),
        use_api=False,
        version=run.request_version,
    )
    return json_encoder.encode(request)
