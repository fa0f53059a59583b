"""Opening the store a process's roles share.

The one place that decides which backend a process runs on, so choosing
another (from a setting) is a change here and nowhere else.
"""

from __future__ import annotations

from connect.roles.settings import PlatformSettings
from connect.store import SqliteStore, Store


async def open_store(settings: PlatformSettings) -> Store:
    return await SqliteStore.open(settings.db)


def describe_store(settings: PlatformSettings) -> str:
    """The store as the ready line names it."""
    return f"db={settings.db}"
