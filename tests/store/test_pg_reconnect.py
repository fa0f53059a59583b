"""The PostgreSQL store across lost connections: a server restart mid-write, a
COMMIT whose answer never arrives, and a database gone for longer than the
reconnect timeout. Real server (the session's throwaway cluster), real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from connect.store import NewEvent, PostgresStore, RunMemo, StepMemo
from connect.store.pg_reconnect import StoreUnavailable
from tests.postgres import PostgresServer
from tests.store.test_store_contract import event_record, run_record

pytestmark = pytest.mark.anyio


class _Proxy:
    """A TCP proxy to the server on this event loop. `drop_answer_after(pred)`:
    the next client chunk for which `pred` is true is forwarded, the server's
    answer to it is read and thrown away, and both sides are cut, so the
    server has done what was asked and the client never hears of it.
    `cut()` drops every connection and refuses new ones until `restore()`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.dropped = 0
        self._pred: Callable[[bytes], bool] | None = None
        self._blocked = False
        self._live: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()

    def drop_answer_after(self, pred: Callable[[bytes], bool]) -> None:
        self._pred = pred

    def cut(self) -> None:
        self._blocked = True
        for w in list(self._live):
            w.transport.abort()
        self._live.clear()

    def restore(self) -> None:
        self._blocked = False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._blocked:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._live.update((writer, up_writer))
        swallow = asyncio.Event()

        async def client_to_server() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while chunk := await reader.read(65536):
                    if self._pred is not None and self._pred(chunk):
                        self._pred = None
                        swallow.set()
                    up_writer.write(chunk)
                    await up_writer.drain()

        async def server_to_client() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while chunk := await up_reader.read(65536):
                    if swallow.is_set():
                        self.dropped += 1
                        return
                    writer.write(chunk)
                    await writer.drain()

        tasks = [asyncio.create_task(client_to_server()), asyncio.create_task(server_to_client())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            self._live.discard(w)
            w.transport.abort()


@pytest.fixture
async def dsn(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database()


@pytest.fixture
async def proxy(postgres_server: PostgresServer) -> AsyncIterator[_Proxy]:
    p = _Proxy(postgres_server.port)
    await p.start()
    yield p
    await p.close()


def _via(dsn: str, proxy: _Proxy) -> str:
    host_port = dsn.split("@", 1)[1].split("/", 1)[0]
    return dsn.replace(host_port, f"127.0.0.1:{proxy.port}")


async def _count(dsn: str, sql: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def test_a_commit_whose_answer_is_lost_is_applied_once_and_answered_as_the_first_time(
    dsn: str, proxy: _Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    store = await PostgresStore.open(_via(dsn, proxy), reconnect_timeout=30)
    try:
        new = NewEvent(
            event_record("e1"),
            runs=[run_record("run-1")],
            memos=[RunMemo("run-1", StepMemo("h1", b"1"))],
        )
        with caplog.at_level(logging.INFO, logger="connect.store"):
            proxy.drop_answer_after(lambda chunk: b"; COMMIT" in chunk)
            stored_reply = await store.put_reply("r1", b"a")
            assert proxy.dropped == 1  # the COMMIT's answer was lost...
            proxy.drop_answer_after(lambda chunk: b"; COMMIT" in chunk)
            stored_events = await store.record_events([new])
            assert proxy.dropped == 2
        # ...yet each caller hears that its write is the one stored, as it is: a
        # blind retry would have answered "already there" to both.
        assert stored_reply is True
        assert stored_events == [True]
        assert "PostgreSQL connection lost" in caplog.text
        assert "PostgreSQL reachable again" in caplog.text
        assert await store.get_reply("r1") == b"a"
        assert await _count(dsn, "SELECT count(*) FROM runs") == 1
        assert await _count(dsn, "SELECT count(*) FROM steps") == 1
        # A second reply for the request still loses to the first.
        assert await store.put_reply("r1", b"b") is False
    finally:
        await store.close()


async def test_a_batch_cut_before_its_commit_is_applied_on_a_new_connection(dsn: str, proxy: _Proxy) -> None:
    store = await PostgresStore.open(_via(dsn, proxy), reconnect_timeout=30)
    try:
        # Cut while the batch's statements go out: nothing of it committed, all of it is applied again.
        proxy.drop_answer_after(lambda chunk: b"INSERT INTO replies" in chunk)
        results = await asyncio.gather(*(store.put_reply(f"r{i}", b"x%d" % i) for i in range(20)))
        assert proxy.dropped == 1
        assert results == [True] * 20
        assert await _count(dsn, "SELECT count(*) FROM replies") == 20
    finally:
        await store.close()


async def test_a_restart_mid_load_loses_no_write_and_applies_none_twice(
    dsn: str, postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = await PostgresStore.open(dsn, reconnect_timeout=60)
    try:
        stop = asyncio.Event()
        done: list[str] = []

        async def writer(k: int) -> None:
            i = 0
            while not stop.is_set():
                run_id = f"run-{k}-{i}"
                [stored] = await store.record_events([NewEvent(event_record(f"e-{k}-{i}"), runs=[run_record(run_id)])])
                assert stored is True
                assert await store.put_memo(run_id, StepMemo("s1", b"1")) is True
                run = await store.get_run(run_id)  # a read, on the pool
                assert run is not None
                done.append(run_id)
                i += 1

        tasks = [asyncio.create_task(writer(k)) for k in range(8)]
        while len(done) < 50:
            await asyncio.sleep(0.01)
        with caplog.at_level(logging.INFO, logger="connect.store"):
            await asyncio.to_thread(postgres_server.restart)
            after_restart = len(done)
            while len(done) < after_restart + 50:
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.gather(*tasks)
        assert "PostgreSQL connection lost" in caplog.text  # the restart did cut the store's connections
        assert "PostgreSQL reachable again" in caplog.text
        assert await _count(dsn, "SELECT count(*) FROM runs") == len(done)
        assert await _count(dsn, "SELECT count(*) FROM steps") == len(done)
        assert await _count(dsn, "SELECT count(*) FROM events") == len(done)
    finally:
        await store.close()


async def test_a_restart_while_idle_is_noticed_at_the_next_write_and_read(
    dsn: str, postgres_server: PostgresServer
) -> None:
    store = await PostgresStore.open(dsn, reconnect_timeout=60)
    try:
        assert await store.put_reply("before", b"x") is True
        assert await store.get_reply("before") == b"x"
        # Both the writer's connection and the reader's are closed by the server while unused.
        await asyncio.to_thread(postgres_server.restart)
        assert await store.put_reply("after", b"y") is True
        assert await store.get_reply("after") == b"y"
        assert await store.put_reply("before", b"z") is False
    finally:
        await store.close()


async def test_a_database_gone_past_the_reconnect_timeout_fails_the_write_then_recovers(
    dsn: str, proxy: _Proxy
) -> None:
    store = await PostgresStore.open(_via(dsn, proxy), reconnect_timeout=1.0)
    try:
        assert await store.put_reply("before", b"x") is True
        proxy.cut()
        with pytest.raises(StoreUnavailable, match=r"unreachable for 1 s"):
            await store.put_reply("during", b"x")
        with pytest.raises(StoreUnavailable):
            await store.get_reply("before")
        proxy.restore()
        assert await store.put_reply("after", b"x") is True
        assert await store.get_reply("before") == b"x"
        assert await store.get_reply("during") is None
    finally:
        await store.close()


def test_the_reconnect_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="reconnect_timeout must be a positive number"):
        asyncio.run(PostgresStore.open("postgresql://127.0.0.1:1/x", reconnect_timeout=0))


async def test_each_open_store_has_one_writer_mark_and_close_removes_it(dsn: str) -> None:
    first = await PostgresStore.open(dsn)
    second = await PostgresStore.open(dsn)
    try:
        await first.put_reply("a", b"x")
        await second.put_reply("b", b"x")
        assert await _count(dsn, "SELECT count(*) FROM writer_marks") == 2
        assert await _count(dsn, "SELECT count(*) FROM writer_marks WHERE batch > 0") == 2
    finally:
        await first.close()
    assert await _count(dsn, "SELECT count(*) FROM writer_marks") == 1
    await second.close()
    assert await _count(dsn, "SELECT count(*) FROM writer_marks") == 0
