"""The loop-bound writer: batches, isolation of failures, checkpoints, ownership."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from connect.store import StoreClosed
from connect.store.writer import SqliteWriter

pytestmark = pytest.mark.anyio


def _setup(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")


def _insert(k: int, v: bytes) -> Callable[[sqlite3.Connection], int]:
    def op(conn: sqlite3.Connection) -> int:
        return conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (k, v)).rowcount

    return op


def _count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM t").fetchone()[0])


async def test_one_batch_per_loop_turn_and_reads_see_earlier_writes(tmp_path: Path) -> None:
    writer = SqliteWriter(tmp_path / "w.db", _setup)
    await writer.start()
    try:
        before = writer.commits
        results = await asyncio.gather(*(writer.submit(_insert(i, b"x")) for i in range(300)), writer.submit(_count))
        assert results[:300] == [1] * 300
        assert results[300] == 300  # submitted after the writes, in the same batch
        assert writer.commits - before == 1
    finally:
        await writer.close()


async def test_a_failing_operation_fails_alone(tmp_path: Path) -> None:
    writer = SqliteWriter(tmp_path / "w.db", _setup)
    await writer.start()
    try:
        ok = [writer.submit(_insert(i, b"x")) for i in range(5)]
        clash = writer.submit(_insert(2, b"again"))  # primary key already taken in the same batch
        results = await asyncio.gather(*ok, clash, return_exceptions=True)
        assert results[:5] == [1] * 5
        assert isinstance(results[5], sqlite3.IntegrityError)
        assert await writer.submit(_count) == 5
    finally:
        await writer.close()


async def test_batches_are_bounded_by_max_batch(tmp_path: Path) -> None:
    writer = SqliteWriter(tmp_path / "w.db", _setup, max_batch=10)
    await writer.start()
    try:
        before = writer.commits
        await asyncio.gather(*(writer.submit(_insert(i, b"x")) for i in range(95)))
        assert writer.commits - before == 10
    finally:
        await writer.close()


async def test_steady_writes_keep_the_wal_bounded(tmp_path: Path) -> None:
    """Commits never checkpoint on the loop; the checkpointer thread, and the
    loop's catch-up once the log is long, must keep the log from growing with
    the data: here 40 MiB of rows written back to back, which leave an
    unmanaged log at over 120 MiB."""
    path = tmp_path / "w.db"
    writer = SqliteWriter(path, _setup, checkpoint_interval=0.02, restart_frames=64)
    await writer.start()
    blob = bytes(4096)
    try:
        for i in range(10_000):
            await writer.submit(_insert(i, blob))
        wal = Path(f"{path}-wal")
        assert wal.stat().st_size < 40 * 1024 * 1024, wal.stat().st_size
    finally:
        await writer.close()
    with sqlite3.connect(path) as conn:
        assert _count(conn) == 10_000
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0


async def test_closed_or_unstarted_writer_refuses_work(tmp_path: Path) -> None:
    writer = SqliteWriter(tmp_path / "w.db", _setup)
    with pytest.raises(StoreClosed, match="not open"):
        await writer.submit(_count)
    await writer.start()
    await writer.close()
    with pytest.raises(StoreClosed, match="closed"):
        await writer.submit(_count)


def test_the_writer_belongs_to_the_loop_that_started_it(tmp_path: Path) -> None:
    writer = SqliteWriter(tmp_path / "w.db", _setup)
    asyncio.run(writer.start())
    try:
        with pytest.raises(RuntimeError, match="another event loop"):
            asyncio.run(writer.submit(_count))
    finally:
        asyncio.run(writer.close())


def test_a_setup_failure_is_raised_from_start(tmp_path: Path) -> None:
    def broken(conn: sqlite3.Connection) -> None:
        raise RuntimeError("schema from the future")

    writer = SqliteWriter(tmp_path / "w.db", broken)
    with pytest.raises(RuntimeError, match="schema from the future"):
        asyncio.run(writer.start())
    with pytest.raises(StoreClosed):
        asyncio.run(writer.submit(_count))
