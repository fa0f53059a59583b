"""Another attempt at a request: after a step's error (a backoff, an
attempt spent) or after its worker was lost (at once, no attempt spent).

A request whose worker is lost (its lease lapses: the worker was killed, cut
off, or went silent) is dispatched again under the same request id, spending
no attempt: a reply the lost worker still delivers answers it (first stored
wins), and a worker that gets it again recognises it. The lapses of one
request are counted in the store, and one past `max_lease_lapses` fails the
run (a step that kills every worker it runs on must not circle forever).
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from connect.dispatch import WorkerStoppedResponding
from connect.executor import replies
from connect.executor.run_state import RunState
from connect.store.base import FAILED, PendingRequest

log = logging.getLogger("connect.executor.runner")


class Attempts(RunState):
    """Retries and re-dispatches of the run's requests."""

    def _retry(self, pending: PendingRequest, retry_after: float | None) -> None:
        """The same request again (same target), one attempt later, after a backoff."""
        run = self.run
        assert run is not None
        delay = retry_after if retry_after is not None else self._s.backoff.delay(pending.attempt)
        wake = int((self._s.clock() + delay) * 1000)
        self._request(pending.step_id, pending.attempt + 1, wake)
        log.debug("run %s: attempt %d in %.2f s", run.run_id, pending.attempt + 1, delay)

    async def _on_lapse(self, pending: PendingRequest, error: WorkerStoppedResponding) -> None:
        """The worker running `pending` was lost: the same request again, with
        no attempt spent and no backoff (nothing suggests the step is at
        fault); the count is stored first, so a restart does not reset it."""
        run = self.run
        assert run is not None
        lapses = pending.lapses + 1
        bound = self._s.max_lease_lapses
        if lapses > bound:
            run.requests.remove(pending)
            err = replies.error(
                "TooManyLeaseLapses",
                f"the worker running this step was lost {lapses} times ({error}); a step lost with its "
                f"worker is dispatched again at most {bound} times (--max-lease-lapses {bound})",
            )
            log.warning(
                "run %s (%s): %s; failing the run",
                run.run_id,
                run.function_id,
                err["message"],
                extra={"run_id": run.run_id, "function": run.function_id, "step": pending.step_id},
            )
            await self._finish(FAILED, replies.encode(err), error=err, consumed=pending.request_id)
            return
        log.warning(
            "run %s (%s): %s; dispatching it again (lost worker %d of at most %d; no attempt spent)",
            run.run_id,
            run.function_id,
            error,
            lapses,
            bound,
            extra={"run_id": run.run_id, "function": run.function_id, "step": pending.step_id},
        )
        run.requests[run.requests.index(pending)] = msgspec.structs.replace(pending, lapses=lapses)
        await self._save()

    async def _retry_or_fail(
        self, pending: PendingRequest, err: dict[str, Any], no_retry: bool, retry_after: float | None
    ) -> None:
        run = self.run
        assert run is not None
        if not no_retry and pending.attempt + 1 < run.max_attempts:
            self._retry(pending, retry_after)
            await self._commit(consumed=pending.request_id)
        else:
            await self._finish(FAILED, replies.encode(err), error=err, consumed=pending.request_id)
