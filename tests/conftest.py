"""Fixtures shared by every layer's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres import PostgresServer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster for the session; tests take a database each."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
