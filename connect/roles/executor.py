"""The executor role: durable runs over the store, dispatching steps through a port.

Start: every run in flight is read back from the store and resumed (timers
and waits re-armed). Stop: run tasks are cancelled; their state stays in the
store, so the next start continues every run.
"""

from __future__ import annotations

from connect.dispatch import Port
from connect.executor import Executor
from connect.roles.settings import PlatformSettings
from connect.store import Store


class ExecutorRole:
    def __init__(self, settings: PlatformSettings, store: Store, dispatcher: Port) -> None:
        self.executor = Executor(
            store,
            dispatcher,
            checkpoint_steps=settings.checkpoint_steps,
            max_lease_lapses=settings.max_lease_lapses,
            executor_id=settings.executor_id,
            owner_lease=settings.owner_lease,
            history_retention=settings.history_retention,
        )

    async def start(self) -> None:
        await self.executor.start()

    async def stop(self) -> None:
        await self.executor.stop()
