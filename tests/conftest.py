"""Fixtures shared by more than one test directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres import PostgresServer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL for the whole session; tests take a fresh
    database each (`create_database`)."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
