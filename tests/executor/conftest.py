from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.executor.harness import Harness


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    hs = Harness(tmp_path / "connect.db")
    await hs.open()
    try:
        yield hs
    finally:
        await hs.close()
