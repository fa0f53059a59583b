"""What the REST API reads, answered from the store: runs, a run's timeline, events.

Shared by the in-process `Executor` and the API process of split roles
(`connect.api.stored_runs`): both read the same rows the same way.
"""

from __future__ import annotations

from typing import Any

from connect.executor import event_views
from connect.executor.event_views import EventPage
from connect.executor.timeline import run_timeline
from connect.executor.views import RunPage, list_runs, run_view, runs_of_event
from connect.store.base import RunFilter, Store
from protocol.payloads import IncomingEvent


class StoredViews:
    """The read routes over `_store`; `replay_event` sends through the class's `send_events`."""

    _store: Store

    async def send_events(self, events: list[IncomingEvent]) -> list[str]:
        raise NotImplementedError

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        run = await self._store.get_run(run_id)
        return None if run is None else run_view(run)

    async def runs_for_event(self, event_id: str) -> list[dict[str, Any]]:
        return await runs_of_event(self._store, event_id)

    async def list_runs(self, query: RunFilter) -> RunPage:
        return await list_runs(self._store, query)

    async def run_timeline(self, run_id: str) -> list[dict[str, Any]] | None:
        return await run_timeline(self._store, run_id)

    async def list_events(self, name: str | None, older_than: tuple[int, str] | None, limit: int) -> EventPage:
        return await event_views.list_events(self._store, name, older_than, limit)

    async def event_detail(self, event_id: str) -> dict[str, Any] | None:
        return await event_views.event_detail(self._store, event_id)

    async def replay_event(self, event_id: str) -> str | None:
        """Send the stored event again as a new one; its new id (None: no such event)."""
        again = await event_views.replay_of(self._store, event_id)
        if again is None:
            return None
        [new_id] = await self.send_events([again])
        return new_id
