"""The executor role: durable runs over the store, dispatching steps through a port.

Start: every run in flight is read back from the store and resumed (timers
and waits re-armed). Stop: run tasks are cancelled; their state stays in the
store, so the next start continues every run.

`ExecutorProcess` is the role as a process of its own among others sharing
one PostgreSQL (`connect serve --role executor`): its steps go through the
store's request queue to whichever gateway can serve them (`QueuedPort`, so
no checkpoints), it follows what other processes record (`shared`, see
`connect.executor.Executor`), and it keeps an entry in the process registry.
"""

from __future__ import annotations

from connect.dispatch import Port
from connect.dispatch.queued import QueuedPort
from connect.executor import Executor
from connect.roles.registration import Registration
from connect.roles.settings import PlatformSettings, default_process_id
from connect.store import Store
from connect.store.base import ROLE_EXECUTOR


class ExecutorRole:
    def __init__(self, settings: PlatformSettings, store: Store, dispatcher: Port, *, shared: bool = False) -> None:
        self.executor = Executor(
            store,
            dispatcher,
            checkpoint_steps=settings.checkpoint_steps and not shared,
            max_lease_lapses=settings.max_lease_lapses,
            executor_id=settings.executor_id,
            owner_lease=settings.owner_lease,
            history_retention=settings.history_retention,
            shared=shared,
            metrics=settings.metrics.runs,
        )

    async def start(self) -> None:
        await self.executor.start()

    async def stop(self) -> None:
        await self.executor.stop()


class ExecutorProcess:
    """An executor among others: the role over a `QueuedPort`, and its registry entry."""

    def __init__(self, settings: PlatformSettings, store: Store) -> None:
        self.process_id = settings.process_id or default_process_id()
        if settings.executor_id is None:
            settings.executor_id = self.process_id
        self.role = ExecutorRole(settings, store, QueuedPort(store), shared=True)
        self.registration = Registration(store, self.process_id, ROLE_EXECUTOR, ttl=settings.process_ttl)

    @property
    def executor(self) -> Executor:
        return self.role.executor

    async def start(self) -> None:
        await self.role.start()
        try:
            await self.registration.start()
        except BaseException:
            await self.role.stop()
            raise

    async def stop(self) -> None:
        """Release this executor's runs for the others to claim at once, and leave the registry."""
        await self.registration.stop()
        await self.role.stop()


async def start_executor_process(settings: PlatformSettings, store: Store) -> ExecutorProcess:
    """An `ExecutorProcess` started: its runs resumed, its registry entry written."""
    process = ExecutorProcess(settings, store)
    await process.start()
    return process
