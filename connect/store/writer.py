"""One SQLite connection on one thread, committing many callers' work at once.

Callers on an event loop submit operations (plain functions of the
connection) and await their results. The thread takes everything queued,
runs it inside one transaction, commits once and only then resolves every
caller's future, with one `call_soon_threadsafe` per batch. Under load a
single commit carries hundreds of writes, which is how hundreds of runs in
flight do not turn into hundreds of commits per step.

Guarantees:

* A result is delivered only after the transaction that produced it has
  committed, so an awaited write is on disk in the WAL when it returns.
* Operations run in submission order; a read sees every write submitted
  before it.
* If any operation of a batch raises, the batch is rolled back and each of
  its operations is run again in a transaction of its own, so one bad
  operation fails only its own caller and never half-applies.
* A caller cancelled while waiting does not take its operation back: it may
  still commit. Operations must therefore be idempotent or harmless to
  apply late, which every store operation is.

Back-pressure: the queue is unbounded, but each caller awaits its own
operation, so at most one operation per waiting coroutine is ever queued.
`max_batch` bounds how much one transaction carries (and so how long the
earliest caller in it waits).
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from connect.store.base import StoreClosed

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], T]


class _Job:
    __slots__ = ("future", "loop", "operation")

    def __init__(
        self,
        operation: Callable[[sqlite3.Connection], Any],
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.operation = operation
        self.future = future
        self.loop = loop


class _Stop:
    __slots__ = ("future", "loop")

    def __init__(self, future: asyncio.Future[None], loop: asyncio.AbstractEventLoop) -> None:
        self.future = future
        self.loop = loop


_Outcome = tuple[asyncio.Future[Any], bool, Any]  # (future, succeeded, result or exception)


def _resolve(outcomes: list[_Outcome]) -> None:
    for future, ok, value in outcomes:
        if future.done():  # the caller was cancelled; its operation ran anyway
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class SqliteWriter:
    """Owns the connection and the thread; see the module docstring."""

    def __init__(
        self,
        path: str | Path,
        setup: Callable[[sqlite3.Connection], None],
        *,
        max_batch: int = 1024,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._path = str(path)
        self._setup = setup
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | _Stop] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._stopped: asyncio.Future[None] | None = None
        self._ready: tuple[asyncio.Future[None], asyncio.AbstractEventLoop] | None = None
        self._thread = threading.Thread(target=self._main, name=f"sqlite-writer:{self._path}", daemon=True)
        self._commits = 0

    @property
    def commits(self) -> int:
        """Transactions committed so far (for tests and metrics)."""
        return self._commits

    async def start(self) -> None:
        """Open the database on the writer thread and run `setup` there."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._ready = (ready, loop)
        self._thread.start()
        await ready

    async def submit(self, operation: Operation[T]) -> T:
        """Run `operation` on the writer thread; return once its batch committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise StoreClosed("the store is closed")
            self._queue.put(_Job(operation, future, loop))
        return await future

    async def close(self) -> None:
        """Run everything already queued, then close the connection and end the thread."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if not self._thread.is_alive():
                    return  # never started, or already ended on its own
                loop = asyncio.get_running_loop()
                self._stopped = loop.create_future()
                self._queue.put(_Stop(self._stopped, loop))
        if self._stopped is not None:
            await asyncio.shield(self._stopped)

    # --- the writer thread ------------------------------------------------------

    def _main(self) -> None:
        assert self._ready is not None
        ready, ready_loop = self._ready
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=True)
            self._setup(conn)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            with self._lock:
                self._closed = True
            ready_loop.call_soon_threadsafe(_resolve, [(ready, False, exc)])
            return
        ready_loop.call_soon_threadsafe(_resolve, [(ready, True, None)])
        stop: _Stop | None = None
        try:
            while stop is None:
                first = self._queue.get()
                if isinstance(first, _Stop):
                    stop = first
                    break
                batch = [first]
                while len(batch) < self._max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(item, _Stop):
                        stop = item
                        break
                    batch.append(item)
                try:
                    self._run_batch(conn, batch)
                except BaseException as exc:  # the connection itself broke
                    self._deliver([(job.future, False, exc) for job in batch], batch)
                    raise
        finally:
            # Reached on close, or if the thread itself failed: either way no
            # caller may be left waiting on a job that will never run.
            with self._lock:
                self._closed = True
            self._fail_queued()
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # the WAL is checkpointed on the next open instead
            conn.close()
            if stop is not None:
                stop.loop.call_soon_threadsafe(_resolve, [(stop.future, True, None)])

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            error = StoreClosed("the store is closed")
            try:
                if isinstance(item, _Stop):
                    item.loop.call_soon_threadsafe(_resolve, [(item.future, True, None)])
                else:
                    item.loop.call_soon_threadsafe(_resolve, [(item.future, False, error)])
            except RuntimeError:
                pass

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        results: list[Any] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                results.append(job.operation(conn))
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if len(batch) > 1:
                for job in batch:
                    self._run_batch(conn, [job])
            else:
                self._deliver([(batch[0].future, False, exc)], batch)
            return
        self._commits += 1
        self._deliver([(job.future, True, r) for job, r in zip(batch, results, strict=True)], batch)

    @staticmethod
    def _deliver(outcomes: list[_Outcome], batch: list[_Job]) -> None:
        # One wake-up per event loop per batch; nearly always a single loop.
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for job, outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(job.loop, []).append(outcome)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:
                pass  # that loop is closed; nobody is waiting any more
