"""Opening the store a process's roles share.

The one place that decides which backend a process runs on, so choosing
another (from a setting) is a change here and nowhere else.
"""

from __future__ import annotations

from connect.roles.settings import PlatformSettings
from connect.store import Store
from connect.store import open as store_open


async def open_store(settings: PlatformSettings) -> Store:
    """PostgreSQL at `settings.database_url` when set, else SQLite at `settings.db`."""
    return await store_open.open_store(settings.db, settings.database_url, pool_size=settings.database_pool_size)


def describe_store(settings: PlatformSettings) -> str:
    """The store as the ready line names it (a URL without its password)."""
    return f"db={store_open.describe_location(settings.db, settings.database_url)}"
