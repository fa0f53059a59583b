"""`/v0/connect/flush` and the checkpoint API in a process with no gateway.

A worker flushes a reply over HTTP when its socket could not deliver it
(the gateway went away, or never ACKed). With no dispatcher in this
process, the reply goes straight to the store: `put_reply` keeps the first
reply stored for a request, and `REPLY_STORED` tells the gateway forwarding
the request (and so its executor) that the reply is in. The 200 answer
leaves only after the reply is durable, as a WORKER_REPLY_ACK does.

Checkpoints over HTTP are never in flight here: split executors send no
request that offers checkpoints (`connect.dispatch.queued.QueuedPort`
refuses them), so a checkpoint is answered 409, a stale dispatch, with
that reason.
"""

from __future__ import annotations

from typing import Final, NoReturn

from starlette.exceptions import HTTPException

from connect.store.base import REPLY_STORED, Store

#: Why a checkpoint over HTTP is refused by an API process of split roles.
CHECKPOINTS_NOT_OFFERED: Final = (
    "stale dispatch: the request is not in flight here: with split roles, requests never offer "
    "checkpoints (each step is a request of its own); end the request with its steps"
)


class StoredReplies:
    """`connect.api.app.ReplySink` over the store (see the module doc)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def accept_reply(self, raw: bytes, request_id: str) -> None:
        """Store the reply unless one is stored already; announce it if this call stored it."""
        if await self._store.put_reply(request_id, raw):
            await self._store.notify(REPLY_STORED, request_id)

    async def checkpoint_over_http(self, run_id: str, request_id: str, body: bytes) -> NoReturn:
        raise HTTPException(409, CHECKPOINTS_NOT_OFFERED)
