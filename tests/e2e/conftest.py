"""The engines the end-to-end tests that take `database_url` run on."""

from __future__ import annotations

import pytest

from tests.postgres import PostgresServer


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None: `connect dev` on its own SQLite file; else a fresh, empty
    database of the session's PostgreSQL, for `--database-url`."""
    if request.param == "sqlite":
        return None
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()
