"""One PostgreSQL connection committing many callers' writes at once, and a pool for reads.

Callers submit operations and await their results. One task owns a writer
connection and runs what was submitted as batches: each batch is one
transaction, so one commit (one WAL flush) carries every write submitted while
the previous batch was in flight. The batch grows with the latency of the
database, which is what group commit is for.

Within a batch, consecutive operations of the same kind (`Bulk`) are applied
together in one call, which turns e.g. 500 `put_reply` calls into two
statements over arrays instead of 1,000 round trips; statements that cannot be
merged are pipelined by `executemany` where they can.

Reads do not queue behind the writer: each waits until every write submitted
before it has committed (so it sees them), then runs on a connection of its
own from the pool. The pool holds `pool_size` connections: one is the
writer's for as long as the store is open, the others serve reads
concurrently (a read waits for a free connection when all are busy).

Guarantees (the same as the SQLite writer's):

* A result is delivered only after the transaction that produced it has
  committed (with PostgreSQL's default `synchronous_commit = on`, durable
  on disk).
* Operations apply in submission order; a read sees every write submitted
  before it.
* If any operation of a batch raises, the batch is rolled back and each of
  its operations is run again in a transaction of its own, so one bad
  operation fails only its own caller and never half-applies.
* A caller cancelled while waiting does not take its operation back: it may
  still commit. Operations must be idempotent or harmless to apply late.

A lost writer connection (a server restart) fails the batch in flight; the
next batch takes a fresh connection from the pool.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic, TypeAlias, TypeVar

import asyncpg

from connect.store.base import StoreClosed

log = logging.getLogger("connect.store")

T = TypeVar("T")
A = TypeVar("A")

if TYPE_CHECKING:
    # asyncpg's classes are generic only in its stubs.
    Connection: TypeAlias = asyncpg.pool.PoolConnectionProxy[asyncpg.Record]
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
else:
    Connection = asyncpg.pool.PoolConnectionProxy
    Pool = asyncpg.Pool

DEFAULT_POOL_SIZE: Final = 8
"""Connections per store: one for the writer, the rest for concurrent reads."""


class Bulk(Generic[A, T]):
    """A kind of operation whose consecutive submissions apply in one call.

    `apply(conn, args)` gets the arguments of a run of submissions, in order,
    and returns one result per argument.
    """

    def __init__(self, name: str, apply: Callable[[Connection, list[A]], Awaitable[list[T]]]) -> None:
        self.name = name
        self.apply = apply


async def _apply_each(conn: Connection, operations: list[Callable[[Connection], Awaitable[Any]]]) -> list[Any]:
    return [await op(conn) for op in operations]


#: Operations of no particular kind: run one after another.
SINGLE: Final[Bulk[Callable[[Connection], Awaitable[Any]], Any]] = Bulk("single", _apply_each)

_Job = tuple[Bulk[Any, Any], Any, "asyncio.Future[Any]"]


class PostgresWriter:
    """Owns the pool and the writer connection; see the module docstring."""

    def __init__(self, pool: Pool, *, max_batch: int = 1024) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._pool = pool
        self._max_batch = max_batch
        self._conn: Connection | None = None
        self._queue: collections.deque[_Job] = collections.deque()
        self._wake = asyncio.Event()
        self._last: asyncio.Future[Any] | None = None  # the newest submission's future
        self._closed = False
        self._commits = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def commits(self) -> int:
        """Transactions committed so far (for tests and metrics)."""
        return self._commits

    @property
    def pool(self) -> Pool:
        return self._pool

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._main(), name="postgres-writer")

    def submit(self, bulk: Bulk[A, T], arg: A) -> asyncio.Future[T]:
        """Queue one operation of kind `bulk` for the next batch; the future
        resolves once that batch committed."""
        if self._closed or self._task is None:
            raise StoreClosed("the store is closed" if self._closed else "the store is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((bulk, arg, future))
        self._last = future
        self._wake.set()
        return future

    def run(self, operation: Callable[[Connection], Awaitable[T]]) -> asyncio.Future[T]:
        """Queue an operation of its own kind (see `SINGLE`)."""
        return self.submit(SINGLE, operation)

    async def read(self, operation: Callable[[Connection], Awaitable[T]]) -> T:
        """Run a read on a pool connection once every write submitted so far has committed."""
        if self._closed:
            raise StoreClosed("the store is closed")
        last = self._last
        if last is not None and not last.done():
            # Only the wait matters here, not whether that write succeeded.
            with contextlib.suppress(Exception):
                await asyncio.shield(last)
        async with self._pool.acquire() as conn:
            return await operation(conn)

    async def aside(self, operation: Callable[[Connection], Awaitable[T]]) -> T:
        """Run a write that need not be ordered with the others (pruning old
        history) on a pool connection of its own, so it never holds up a batch.
        `operation` opens its own transaction."""
        if self._closed:
            raise StoreClosed("the store is closed")
        async with self._pool.acquire() as conn:
            return await operation(conn)

    async def close(self) -> None:
        """Commit everything already submitted, then close every connection."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._conn is not None:
            await self._pool.release(self._conn)
            self._conn = None
        await self._pool.close()

    # --- batches -------------------------------------------------------------------

    async def _main(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
                await self._run_batch(batch)
            if self._closed:
                return

    async def _connection(self) -> Connection:
        if self._conn is not None and self._conn.is_closed():
            with contextlib.suppress(Exception):
                await self._pool.release(self._conn)
            self._conn = None
        if self._conn is None:
            self._conn = await self._pool.acquire()
        return self._conn

    async def _run_batch(self, batch: Sequence[_Job]) -> None:
        try:
            conn = await self._connection()
            async with conn.transaction():
                results: list[Any] = []
                for bulk, args in _runs(batch):
                    applied = await bulk.apply(conn, args)
                    if len(applied) != len(args):
                        raise AssertionError(f"{bulk.name} returned {len(applied)} results for {len(args)}")
                    results.extend(applied)
        except Exception as exc:
            if len(batch) > 1:
                for job in batch:
                    await self._run_batch([job])
            elif not batch[0][2].done():
                batch[0][2].set_exception(exc)
            return
        except BaseException as exc:  # cancelled: nobody may be left waiting
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(StoreClosed(f"the batch was interrupted: {exc!r}"))
            raise
        self._commits += 1
        for (_, _, future), result in zip(batch, results, strict=True):
            if not future.done():  # a cancelled caller's operation ran anyway
                future.set_result(result)


def _runs(batch: Sequence[_Job]) -> list[tuple[Bulk[Any, Any], list[Any]]]:
    """Split a batch into runs of consecutive operations of the same kind."""
    runs: list[tuple[Bulk[Any, Any], list[Any]]] = []
    for bulk, arg, _ in batch:
        if runs and runs[-1][0] is bulk:
            runs[-1][1].append(arg)
        else:
            runs.append((bulk, [arg]))
    return runs
