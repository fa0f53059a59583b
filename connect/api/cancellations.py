"""`POST /v1/cancellations`: cancel many runs of one function, as Inngest's.

Body: `{"function_id", "started_after", "started_before", "if"}`:
`function_id` is required (as `GET /v1/functions` lists it; Inngest's
`app_id` is accepted and not needed), the times are ISO-8601 (a start at or
after `started_after` and before `started_before`; either may be left out),
`if` an optional CEL expression over the run's triggering `event`. Answer:
`{"data": {"cancelled": n}}`, the Running runs flagged. With `"dry_run":
true` nothing is cancelled and the answer is `{"data": {"matching": n}}`,
the runs the same body would flag now (the dashboard asks this first, to
say how many runs a cancellation will touch). A body that is not such an
object, a bad time or an `if` that is not CEL is answered 400.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connect.api import paging
from connect.api.bodies import BodyRefused, read_body
from connect.api.errors import error
from connect.executor.bulk_cancel import Cancellation
from connect.executor.expressions import Expression

#: The largest body, in bytes.
MAX_BODY: Final = 64 * 1024

#: Answers why a request is refused (401), or None to serve it.
Guard = Callable[[Request], Response | None]


class Canceller(Protocol):
    async def cancel_matching(self, cancellation: Cancellation) -> int: ...


class _Body(msgspec.Struct, forbid_unknown_fields=False):
    function_id: str
    started_after: str | None = None
    started_before: str | None = None
    app_id: str | None = None
    # `if` is a Python keyword: renamed on the wire.
    condition: str | None = msgspec.field(default=None, name="if")
    dry_run: bool = False


def cancellation(raw: bytes) -> Cancellation:
    """The `Cancellation` a body asks for; raises `paging.BadQuery`."""
    try:
        body = msgspec.json.decode(raw, type=_Body)
    except msgspec.DecodeError as exc:
        raise paging.BadQuery(f'send {{"function_id", "started_after", "started_before", "if"}}: {exc}') from None
    if not body.function_id:
        raise paging.BadQuery("function_id must not be empty")
    after = paging.time_ms("started_after", body.started_after)
    before = paging.time_ms("started_before", body.started_before)
    if after is not None and before is not None and after > before:
        raise paging.BadQuery("started_after must not be later than started_before")
    expression = None
    if body.condition:
        try:
            expression = Expression(body.condition)
        except ValueError as exc:
            raise paging.BadQuery(f"if: {exc}") from None
    return Cancellation(body.function_id, after, before, expression, dry_run=body.dry_run)


def routes(canceller: Canceller, guard: Guard) -> list[Route]:
    async def cancel_many(request: Request) -> Response:
        if (denied := guard(request)) is not None:
            return denied
        try:
            wanted = cancellation(await read_body(request, MAX_BODY, "cancellation"))
        except BodyRefused as exc:
            return exc.response
        except paging.BadQuery as exc:
            return error(400, str(exc))
        count = await canceller.cancel_matching(wanted)
        answer: dict[str, Any] = {"matching": count} if wanted.dry_run else {"cancelled": count}
        return JSONResponse({"data": answer})

    return [Route("/v1/cancellations", cancel_many, methods=["POST"])]
