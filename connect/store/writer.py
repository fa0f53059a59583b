"""One SQLite connection on the event loop, committing many callers' work at once.

Callers submit operations (plain functions of the connection) and await their
results. Everything submitted while the loop runs its current callbacks is
collected; one callback scheduled behind them runs the whole collection inside
one transaction, commits once and only then resolves every caller's future.
When replies from hundreds of runs arrive in one read of the sockets, one
commit carries all of them.

Why on the loop and not on a thread of its own: a statement against a small
table costs microseconds, while each hand-off between threads costs a wake-up
of the other thread and a turn of the GIL, measured at over 100 µs per
awaited operation on a 2-vCPU machine. Run inline, an awaited write returns
in the time of its commit, and the loop spends its CPU on statements instead
of on thread switches.

What would block the loop for long is moving the write-ahead log into the
database file (a checkpoint, which calls fsync). Automatic checkpoints are
therefore off on the loop's connection; a checkpointer thread with its own
connection runs passive checkpoints (which never block the writer) whenever
there were commits since the last one, at most every `checkpoint_interval`
seconds. Under steady writes a passive checkpoint never quite catches up, so
the log could not start over and would grow without end: once it holds more
than `restart_frames` pages, the loop's connection itself checkpoints between
two batches, when no write can race it. The thread has already copied nearly
everything by then, so that costs the loop the last few pages and one fsync
per `restart_frames` pages written; the next commit starts the log over and
`journal_size_limit` caps the file left behind.

Guarantees:

* A result is delivered only after the transaction that produced it has
  committed, so an awaited write is in the WAL when it returns.
* Operations run in submission order; a read sees every write submitted
  before it.
* If any operation of a batch raises, the batch is rolled back and each of
  its operations is run again in a transaction of its own, so one bad
  operation fails only its own caller and never half-applies.
* A caller cancelled while waiting does not take its operation back: it may
  still commit. Operations must therefore be idempotent or harmless to
  apply late, which every store operation is.

The writer belongs to the event loop that started it; submitting from another
loop or thread raises `RuntimeError`. `max_batch` bounds how much one
transaction carries (and so how long one batch holds the loop); what is left
runs in the next callback.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from connect.store.base import StoreClosed

log = logging.getLogger("connect.store")

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], T]

CHECKPOINT_INTERVAL = 0.5
"""Seconds between passive checkpoints while there are commits to move."""

RESTART_FRAMES = 4096
"""WAL pages (4 KiB each) past which the checkpointer makes the log start over."""

JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
"""Bytes of WAL file kept after the log starts over."""

_Job = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]


class SqliteWriter:
    """Owns the connection; see the module docstring."""

    def __init__(
        self,
        path: str | Path,
        setup: Callable[[sqlite3.Connection], None],
        *,
        max_batch: int = 1024,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
        restart_frames: int = RESTART_FRAMES,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if checkpoint_interval <= 0:
            raise ValueError(f"checkpoint_interval must be positive, got {checkpoint_interval}")
        self._path = str(path)
        self._setup = setup
        self._max_batch = max_batch
        self._checkpoint_interval = checkpoint_interval
        self._restart_frames = restart_frames
        self._conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._queue: collections.deque[_Job] = collections.deque()
        self._scheduled = False
        self._closed = False
        self._commits = 0
        self._dirty = False  # commits since the last checkpoint began
        self._catch_up = False  # the log is long: checkpoint it from the loop
        self._stop_checkpoints = threading.Event()
        self._checkpointer: threading.Thread | None = None

    @property
    def commits(self) -> int:
        """Transactions committed so far (for tests and metrics)."""
        return self._commits

    async def start(self) -> None:
        """Open the database, run `setup`, and start the checkpointer."""
        if self._conn is not None or self._closed:
            raise RuntimeError("the writer was already started")
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=True)
        try:
            self._setup(conn)
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        except BaseException:
            conn.close()
            self._closed = True
            raise
        self._conn = conn
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_main, name=f"sqlite-checkpoint:{self._path}", daemon=True
        )
        self._checkpointer.start()

    async def submit(self, operation: Operation[T]) -> T:
        """Run `operation` in the next batch; return once that batch committed."""
        return await self.submit_nowait(operation)

    def submit_nowait(self, operation: Operation[T]) -> asyncio.Future[T]:
        """Queue `operation` for the next batch now; the future resolves once
        that batch committed. For writes whose caller need not wait: no task
        or coroutine per write, and submission order is kept all the same."""
        if self._closed or self._loop is None:
            raise StoreClosed("the store is closed" if self._closed else "the store is not open")
        loop = self._loop
        # Its own thread with its loop running means its loop: one loop runs
        # per thread at a time (and `asyncio.get_running_loop()` costs a
        # system call per write).
        if threading.get_ident() != self._thread or not loop.is_running():
            raise RuntimeError("the store belongs to another event loop")
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append((operation, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._drain)
        return future

    async def close(self) -> None:
        """Run everything already submitted, then checkpoint and close the file."""
        if self._closed:
            return
        self._closed = True
        if self._conn is None:
            return
        while self._queue:
            self._drain()
        self._stop_checkpoints.set()
        if self._checkpointer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.join)
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # the WAL is checkpointed on the next open instead
        self._conn.close()

    # --- batches, on the loop ----------------------------------------------------

    def _drain(self) -> None:
        self._scheduled = False
        assert self._conn is not None
        batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
        if self._queue and not self._scheduled:
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._drain)
        if batch:
            self._run_batch(self._conn, batch)
        if self._catch_up:
            self._catch_up = False
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:
                log.warning("checkpoint of %s failed; retrying later", self._path, exc_info=True)

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        results: list[Any] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for operation, _ in batch:
                results.append(operation(conn))
            conn.execute("COMMIT")
        except BaseException as exc:
            if not isinstance(exc, Exception):  # e.g. KeyboardInterrupt: nobody may be left waiting
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(StoreClosed(f"the batch was interrupted: {exc!r}"))
                raise
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if len(batch) > 1:
                for job in batch:
                    self._run_batch(conn, [job])
            elif not batch[0][1].done():
                batch[0][1].set_exception(exc)
            return
        self._commits += 1
        self._dirty = True
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # a cancelled caller's operation ran anyway
                future.set_result(result)

    # --- checkpoints, on their own thread --------------------------------------------

    def _checkpoint_main(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=True)
        except sqlite3.Error:
            log.exception("cannot open %s for checkpoints; the WAL grows until close", self._path)
            return
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            while not self._stop_checkpoints.wait(self._checkpoint_interval):
                if not self._dirty:
                    continue
                self._dirty = False
                try:
                    _, log_frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if log_frames > self._restart_frames:
                        self._catch_up = True  # the loop finishes it between two batches
                except sqlite3.Error:
                    log.warning("checkpoint of %s failed; retrying later", self._path, exc_info=True)
                    self._dirty = True
        finally:
            conn.close()
