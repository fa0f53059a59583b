"""`ExecutorProcess`: an executor as a process among others, with its registry entry."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from connect.roles.executor import start_executor_process
from connect.roles.settings import PlatformSettings
from connect.store import SqliteStore
from connect.store.base import READY, ROLE_EXECUTOR

pytestmark = pytest.mark.anyio


async def test_it_registers_renews_and_leaves_the_registry(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "connect.db")
    settings = PlatformSettings(database_url=None, process_id="exec-7", process_ttl=0.3, roles=frozenset({"executor"}))
    try:
        process = await start_executor_process(settings, store)
        assert process.executor.executor_id == "exec-7"  # the process id, unless --executor-id says otherwise
        [entry] = await store.list_processes(ROLE_EXECUTOR, int(time.time() * 1000))
        assert (entry.process_id, entry.address, entry.state) == ("exec-7", "", READY)
        first_expiry = entry.expires_at_ms
        # Renewed every third of the TTL: later the entry is still live, and lasts longer.
        deadline = time.time() + 10
        while True:
            live = await store.list_processes(ROLE_EXECUTOR, int(time.time() * 1000))
            if live and live[0].expires_at_ms > first_expiry:
                break
            assert time.time() < deadline, "the registry entry was not renewed"
            await asyncio.sleep(0.02)
        await process.stop()
        assert await store.list_processes(ROLE_EXECUTOR, 0) == []
    finally:
        await store.close()
