"""`GatewayDirectory`: which gateway `/v0/connect/start` hands out, read
from the registry of a real store, with an injected clock.

Two SQLite store objects on one file stand for two processes whose
notifications do not reach each other (a lost notification): the registry
written through one is seen by the directory on the other only once its
cached read is `max_age` old.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Collection
from pathlib import Path

import pytest

from connect.api.app import GatewayRefused
from connect.api.gateways import GatewayDirectory
from connect.store import SqliteStore
from connect.store.base import ConnectionRecord, ProcessRecord

pytestmark = pytest.mark.anyio

NOW = 1_900_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def gateway(process_id: str, state: str = "ready") -> ProcessRecord:
    now_ms = int(NOW * 1000)
    return ProcessRecord(process_id, "gateway", f"ws://{process_id}:8289/v0/connect", state, now_ms + 60_000, now_ms)


def connection(gateway_id: str, instance_id: str) -> ConnectionRecord:
    now_ms = int(NOW * 1000)
    return ConnectionRecord(
        f"c-{gateway_id}-{instance_id}", gateway_id, instance_id, [], [], None, 0, "ready", now_ms, now_ms + 60_000
    )


async def refusal(directory: GatewayDirectory, exclude: Collection[str] = ()) -> GatewayRefused:
    """The refusal the directory answers with once notifications (delivered
    asynchronously, even on SQLite) have been taken into account."""
    async with asyncio.timeout(10):
        while True:
            try:
                await directory.assign(None, exclude)
            except GatewayRefused as exc:
                return exc
            await asyncio.sleep(0.01)


async def group_once_told(directory: GatewayDirectory, wanted: str, exclude: Collection[str] = ()) -> str:
    """The group handed out, once it is `wanted` (a change announced reaches the directory)."""
    async with asyncio.timeout(10):
        while (group := (await directory.assign(None, exclude)).group) != wanted:
            await asyncio.sleep(0.01)
    return group


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, SqliteStore]]:
    writer = await SqliteStore.open(tmp_path / "registry.db")
    reader = await SqliteStore.open(tmp_path / "registry.db")
    try:
        yield writer, reader
    finally:
        await reader.close()
        await writer.close()


async def test_a_registry_read_is_used_for_at_most_max_age(stores: tuple[SqliteStore, SqliteStore]) -> None:
    writer, reader = stores
    clock = Clock()
    directory = GatewayDirectory(reader, max_connections_per_instance=4, clock=clock)
    await directory.start()
    await writer.put_process(gateway("gw-a"))
    assert (await directory.assign(None, ())).group == "gw-a"
    await writer.drop_process("gw-a", "gateway")
    await writer.put_process(gateway("gw-b"))
    clock.now += 0.99
    assert (await directory.assign(None, ())).group == "gw-a"  # cached, and no notification came
    clock.now += 0.02
    assert (await directory.assign(None, ())).group == "gw-b"


async def test_a_registry_change_announced_is_read_at_once(stores: tuple[SqliteStore, SqliteStore]) -> None:
    _, store = stores
    directory = GatewayDirectory(store, max_connections_per_instance=4, clock=Clock())
    await directory.start()
    await store.put_process(gateway("gw-a"))
    assert (await directory.assign(None, ())).group == "gw-a"
    await store.put_process(gateway("gw-a", state="draining"))  # notifies PROCESSES_CHANGED
    await store.put_process(gateway("gw-b"))
    # The only ready one, though excluded; no clock moved, so the notification did it.
    assert await group_once_told(directory, "gw-b", ("gw-b",)) == "gw-b"


async def test_workers_go_to_the_gateway_with_the_fewest_connections(stores: tuple[SqliteStore, SqliteStore]) -> None:
    _, store = stores
    directory = GatewayDirectory(store, max_connections_per_instance=4, clock=Clock(), rng=random.Random(7))
    await directory.start()
    await store.put_process(gateway("gw-a"))
    await store.put_process(gateway("gw-b"))
    await store.put_connections("gw-a", [connection("gw-a", f"i{n}") for n in range(3)])
    picks = [(await directory.assign(None, ())).group for _ in range(5)]
    # gw-b catches up first (0 -> 3), then they alternate from a tie.
    assert picks[:3] == ["gw-b"] * 3
    assert sorted(picks[3:]) == ["gw-a", "gw-b"]


async def test_an_instance_at_its_limit_across_gateways_is_refused(stores: tuple[SqliteStore, SqliteStore]) -> None:
    _, store = stores
    directory = GatewayDirectory(store, max_connections_per_instance=2, clock=Clock())
    await directory.start()
    await store.put_process(gateway("gw-a"))
    await store.put_process(gateway("gw-b"))
    await store.put_connections("gw-a", [connection("gw-a", "i1")])
    await directory.assign("i1", ())  # its second connection (a handover): admitted, and counted
    with pytest.raises(GatewayRefused) as refused:
        await directory.assign("i1", ())
    assert refused.value.status == 429
    assert "reached max allowed connections (2)" in refused.value.message
    await directory.assign("i2", ())


async def test_no_ready_gateway_is_a_503_naming_the_cause(stores: tuple[SqliteStore, SqliteStore]) -> None:
    _, store = stores
    clock = Clock()
    directory = GatewayDirectory(store, max_connections_per_instance=2, clock=clock)
    await directory.start()
    with pytest.raises(GatewayRefused, match="no gateway is registered") as refused:
        await directory.assign(None, ())
    assert refused.value.status == 503
    await store.put_process(gateway("gw-a", state="draining"))

    async def draining() -> GatewayRefused:
        async with asyncio.timeout(10):
            while "draining" not in (refused := await refusal(directory)).message:
                await asyncio.sleep(0.01)
        return refused

    assert "every registered gateway (1) is draining" in (await draining()).message
    expired = gateway("gw-b")
    await store.put_process(
        ProcessRecord("gw-b", "gateway", expired.address, "ready", int(NOW * 1000) - 1, expired.started_at_ms)
    )
    clock.now += 1.1  # past any cached read
    assert "every registered gateway (1) is draining" in (await draining()).message  # an expired entry is no gateway
