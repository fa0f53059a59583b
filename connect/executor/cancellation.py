"""Cancelling a run.

Cancellation takes effect at the next step boundary: requests not yet with
a worker are dropped, requests a worker is running are awaited (their step
bodies are not interrupted), and the run ends `Cancelled`.
"""

from __future__ import annotations

import logging

from connect.executor import replies
from connect.executor.run_state import RunState
from connect.executor.system_events import CANCELLED_ERROR
from connect.store.base import CANCELLED

log = logging.getLogger("connect.executor.runner")


class Cancelling(RunState):
    """Cancellation of the run."""

    async def _begin_cancel(self, reason: str) -> None:
        """Stop at the next step boundary: drop what no worker holds, await the rest."""
        if self._cancel_reason is not None:
            return
        self._cancel_reason = reason
        for rid, task in list(self._tasks.items()):
            if rid not in self._forwarded:
                task.cancel()
                del self._tasks[rid]
        if not self._tasks:
            await self._finish_cancelled()

    async def _finish_cancelled(self, consumed: str | None = None) -> None:
        reason = self._cancel_reason or "cancelled"
        err = {**CANCELLED_ERROR, "message": f"the run was cancelled: {reason}"}
        await self._finish(CANCELLED, replies.encode(err), error=err, consumed=consumed)
