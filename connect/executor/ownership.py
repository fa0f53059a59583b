"""This executor's hold on its runs: who it is, the fencing token of each run
it owns, its heartbeat and the claims it makes.

A Running run is driven by exactly one executor, its owner (see the
ownership section of `connect.store.base`). An executor owns the runs it
starts from the moment they are stored, takes back the runs recorded as its
own when it starts again under the same id, and claims the runs of executors
whose heartbeat lapsed (a crashed process, a lost host) or that released
them (a graceful stop). Its heartbeat is renewed every third of the lease, so
two renewals may fail before others may take its runs; a run taken from it
is noticed at its next write, which the store refuses (`RunOwnershipLost`).

Claims come in batches of `CLAIM_BATCH`, so one executor that starts next to
thousands of orphaned runs takes them a batch at a time and another starting
at the same moment gets its share. Executors that share the store with API
processes claim in batches of `SHARED_CLAIM_BATCH`: every executor is woken
by the same `RUNS_RELEASED` notification when new runs arrive, and small
batches (skipping rows another claim holds) spread those runs over them.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Final

from connect.store.base import NEW_RUN_FENCE, Claim, Store

#: How long an executor's heartbeat keeps its runs its own, in seconds.
DEFAULT_OWNER_LEASE: Final = 30.0
#: Runs taken in one claim.
CLAIM_BATCH: Final = 500
#: Runs taken in one claim when other executors claim the same new runs.
SHARED_CLAIM_BATCH: Final = 8


def default_executor_id() -> str:
    """The host name: stable across restarts of one pod or machine, so a
    restarted executor takes its own runs back at once instead of waiting for
    its old heartbeat to lapse. Executors sharing a host need ids of their own."""
    return socket.gethostname()


class Ownership:
    """The fencing token of every run this executor owns, and its heartbeat."""

    def __init__(
        self,
        store: Store,
        executor_id: str,
        *,
        lease: float,
        clock: Callable[[], float],
        claim_batch: int = CLAIM_BATCH,
    ) -> None:
        if not executor_id:
            raise ValueError("the executor id must not be empty")
        if lease <= 0:
            raise ValueError(f"the owner lease must be positive, got {lease}")
        if claim_batch < 1:
            raise ValueError(f"the claim batch must be positive, got {claim_batch}")
        self._claim_batch = claim_batch
        self._store = store
        self._clock = clock
        self.executor_id = executor_id
        self.lease = lease
        self._fences: dict[str, int] = {}

    @property
    def renew_interval(self) -> float:
        """How often the heartbeat is renewed: a third of the lease."""
        return self.lease / 3

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def fence(self, run_id: str) -> int:
        """The token this executor's writes of `run_id` carry."""
        return self._fences[run_id]

    def owns(self, run_id: str) -> bool:
        return run_id in self._fences

    def started(self, run_id: str) -> None:
        """A run this executor just stored as its own (see `NewEvent.owner`)."""
        self._fences[run_id] = NEW_RUN_FENCE

    def forget(self, run_id: str) -> None:
        """The run ended, or another executor owns it now."""
        self._fences.pop(run_id, None)

    async def renew(self) -> None:
        await self._store.heartbeat(self.executor_id, self._now_ms() + int(self.lease * 1000))

    async def take_back(self) -> list[Claim]:
        """At start: give up what an earlier process under this id held (it is
        gone: no write of it may land any more), then claim every run nobody
        owns, its own among them."""
        await self._store.release_runs(self.executor_id)
        await self.renew()
        return await self.sweep()

    async def sweep(self) -> list[Claim]:
        """Claim the runs nobody owns or whose owner's heartbeat lapsed."""
        claimed: list[Claim] = []
        while True:
            batch = await self._store.claim_runs(self.executor_id, self._now_ms(), self._claim_batch)
            for claim in batch:
                self._fences[claim.run_id] = claim.fence
            claimed.extend(batch)
            if len(batch) < self._claim_batch:
                return claimed

    async def release(self) -> int:
        """Give every owned run up for others to claim at once (a graceful stop)."""
        self._fences.clear()
        return await self._store.release_runs(self.executor_id)
