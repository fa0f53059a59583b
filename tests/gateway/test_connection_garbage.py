"""Connections that end in the handshake leave nothing for the cyclic
collector: the platform raises its thresholds (`connect.cli.GC_THRESHOLDS`),
so garbage in reference cycles would pile up for a long time.

On uvloop, as the platform runs: the standard library's selector transports
leave cycles of their own when aborted, on both ends of a connection."""

from __future__ import annotations

import asyncio
import gc
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_churn_memory import silent_worker, vanishing_peer
from tests.gateway.stack import start_gateway


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return ("asyncio", {"use_uvloop": True})


@pytest.fixture
def no_automatic_collection() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


#: The packages a connection's two ends run in, and the test clients' own files: a cycle a
#: connection makes holds an object of theirs or a frame or function of their code.
CONNECTION_CODE = ("connect", "protocol", "websockets", "uvloop")
CLIENT_FILES = ("/tests/e2e/test_churn_memory.py", "/tests/gateway/")


def connection_garbage() -> list[Any]:
    """Collect; the unreachable objects that belong to a connection's code. Garbage that
    other tests' leftovers in this process (an abandoned thread, say) make meanwhile is
    not this test's subject."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return [o for o in found if _of_connection_code(o)]


def _of_connection_code(o: Any) -> bool:
    if isinstance(o, types.FrameType):
        return _in_connection_code(o.f_code.co_filename)
    if isinstance(o, types.FunctionType | types.CoroutineType):
        return _in_connection_code(
            o.__code__.co_filename if isinstance(o, types.FunctionType) else o.cr_code.co_filename
        )
    return (type(o).__module__ or "").split(".")[0] in CONNECTION_CODE


def _in_connection_code(filename: str) -> bool:
    return any(f"/{part}/" in filename for part in CONNECTION_CODE)


@pytest.mark.anyio
@pytest.mark.usefixtures("no_automatic_collection")
async def test_handshake_churn_leaves_no_cyclic_garbage(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path / "gw.db", handshake_timeout=0.05)
    try:
        gc.collect()
        for i in range(150):
            match i % 3:
                case 0:
                    await silent_worker(gw.gateway_port, answer_close=True)
                case 1:
                    await silent_worker(gw.gateway_port, answer_close=False)
                case _:
                    await vanishing_peer(gw.gateway_port)
        await asyncio.sleep(0.2)  # the last connections' ends run on the loop
        unreachable = connection_garbage()
    finally:
        await gw.close()
    # Before, each of these connections left 15 to 70 objects in cycles.
    kinds = sorted({type(o).__qualname__ for o in unreachable})
    assert unreachable == [], f"{len(unreachable)} objects in reference cycles after 150 connections: {kinds}"
