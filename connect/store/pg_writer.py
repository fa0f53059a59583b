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
* A lost connection (a server restart) loses nothing: the batch in flight is
  applied again on a fresh connection, with backoff (`pg_reconnect`), and
  every later submission waits behind it. Applied again only if it did not
  commit: when the connection was lost after COMMIT was sent, the outcome is
  unknown to the client, so each commit also stamps the writer's row in
  `writer_marks` with the batch's number, and the next attempt first reads
  that row (locking it, so it waits for a transaction of ours the server may
  still be finishing): stamped means committed, and the results the first
  attempt computed are delivered. So no operation is applied twice and none
  sees "already there" for its own write. Reads retry the same way.

Each open writer owns one row of `writer_marks`, deleted when it closes; a
process killed without closing leaves its row (a few dozen bytes) behind.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic, TypeAlias, TypeVar

import asyncpg

from connect.store.base import StoreClosed
from connect.store.pg_reconnect import (
    DEFAULT_RECONNECT_TIMEOUT,
    ConnectionLost,
    StoreUnavailable,
    is_connection_lost,
    validate_reconnect_timeout,
    with_reconnect,
)

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
"""Connections per store: one for the writer, the rest for concurrent reads.

Seven readers: the platform reads a run when it starts or resumes, looks up
stored replies and leases, and serves the REST API; those reads are short
(steps themselves are written, not read back), so seven at once keep up with
the writer without holding many server backends (each costs PostgreSQL a
process and some memory; `max_connections` is 100 by default). Notifications
take one more connection, outside the pool (`pg_notify.PostgresListener`)."""


class Bulk(Generic[A, T]):
    """A kind of operation whose consecutive submissions apply in one call.

    `apply(conn, args)` gets the arguments of a run of submissions, in order,
    and returns one result per argument.

    `prelude(arg)`, if given, names a statement (constant SQL, no parameters)
    that the batch carrying `arg` must run first: the writer sends the
    distinct preludes of a batch with its BEGIN, in the same round trip. A
    transaction-scoped lock taken this way is held from the start of the
    batch to its commit, and costs no round trip of its own.
    """

    def __init__(
        self,
        name: str,
        apply: Callable[[Connection, list[A]], Awaitable[list[T]]],
        prelude: Callable[[A], str | None] | None = None,
    ) -> None:
        self.name = name
        self.apply = apply
        self.prelude = prelude


async def _apply_each(conn: Connection, operations: list[Callable[[Connection], Awaitable[Any]]]) -> list[Any]:
    return [await op(conn) for op in operations]


#: Operations of no particular kind: run one after another.
SINGLE: Final[Bulk[Callable[[Connection], Awaitable[Any]], Any]] = Bulk("single", _apply_each)

_Job = tuple[Bulk[Any, Any], Any, "asyncio.Future[Any]"]


class PostgresWriter:
    """Owns the pool and the writer connection; see the module docstring."""

    def __init__(
        self, pool: Pool, *, max_batch: int = 1024, reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._pool = pool
        self._max_batch = max_batch
        self._reconnect_timeout = validate_reconnect_timeout(reconnect_timeout)
        self._id = uuid.uuid4().hex  # this writer's row in writer_marks
        self._mark = 0  # the number of the last batch whose COMMIT was sent
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

    async def start(self) -> None:
        """Create this writer's row in `writer_marks`, then take submissions."""

        async def register() -> None:
            async with self._pool.acquire() as conn:
                await conn.execute("INSERT INTO writer_marks (writer_id, batch) VALUES ($1, 0)", self._id)

        await with_reconnect(register, timeout=self._reconnect_timeout, what="opening the writer")
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

        async def attempt() -> T:
            async with self._pool.acquire() as conn:
                try:
                    return await operation(conn)
                except Exception as exc:
                    if not is_connection_lost(exc) and _closed(conn):
                        raise ConnectionLost(str(exc)) from exc
                    raise

        return await with_reconnect(attempt, timeout=self._reconnect_timeout, what="a read")

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
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # unreachable now: the row stays, harmless
                await conn.execute("DELETE FROM writer_marks WHERE writer_id = $1", self._id)
            with contextlib.suppress(Exception):  # already taken back by the pool if it closed
                await self._pool.release(conn)
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
        if self._conn is not None and _closed(self._conn):
            log.warning("PostgreSQL connection lost while idle (a server restart?); the writer opens a new one")
            await self._drop_connection()
        if self._conn is None:
            self._conn = await self._pool.acquire()
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()
            with contextlib.suppress(Exception):
                await self._pool.release(conn)

    async def _run_batch(self, batch: Sequence[_Job]) -> None:
        sent = _Sent()
        try:
            results = await with_reconnect(
                lambda: self._attempt(batch, sent),
                timeout=self._reconnect_timeout,
                what=f"a batch of {len(batch)} writes",
            )
        except StoreUnavailable as exc:
            # Split or not, the database is not there: fail them all now.
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except Exception as exc:
            if len(batch) > 1:
                for job in batch:
                    await self._run_batch([job])
            elif not batch[0][2].done():
                batch[0][2].set_exception(exc)
            return
        except BaseException as exc:  # cancelled: nobody may be left waiting
            await self._drop_connection()  # it may be inside a transaction
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(StoreClosed(f"the batch was interrupted: {exc!r}"))
            raise
        self._commits += 1
        for (_, _, future), result in zip(batch, results, strict=True):
            if not future.done():  # a cancelled caller's operation ran anyway
                future.set_result(result)

    async def _attempt(self, batch: Sequence[_Job], sent: _Sent) -> list[Any]:
        """Apply `batch` in one transaction and commit it; see "A lost connection" in the module docstring."""
        conn = await self._connection()
        preludes = sorted({p for bulk, arg, _ in batch if bulk.prelude is not None and (p := bulk.prelude(arg))})
        try:
            # One message, one round trip: BEGIN and the batch's preludes.
            await conn.execute("; ".join(["BEGIN", *preludes]))
            if sent.mark is not None:
                stamped = await conn.fetchval(
                    "SELECT batch FROM writer_marks WHERE writer_id = $1 FOR UPDATE", self._id
                )
                if stamped == sent.mark:
                    await conn.execute("ROLLBACK")
                    return sent.results
            results: list[Any] = []
            for bulk, args in _runs(batch):
                applied = await bulk.apply(conn, args)
                if len(applied) != len(args):
                    raise AssertionError(f"{bulk.name} returned {len(applied)} results for {len(args)}")
                results.extend(applied)
            self._mark += 1
            sent.mark, sent.results = self._mark, results
            # One message, one round trip: the stamp and the COMMIT (both are
            # literals we made: a number and a hex string).
            await conn.execute(
                f"UPDATE writer_marks SET batch = {self._mark} WHERE writer_id = '{self._id}'; COMMIT"  # noqa: S608
            )
            return results
        except Exception as exc:
            if is_connection_lost(exc) or _closed(conn):
                await self._drop_connection()
                if isinstance(exc, ConnectionLost):
                    raise
                raise ConnectionLost(str(exc)) from exc
            try:
                await conn.execute("ROLLBACK")
            except Exception:
                await self._drop_connection()
            raise


class _Sent:
    """The batch number and results of the last attempt whose COMMIT was sent."""

    __slots__ = ("mark", "results")

    def __init__(self) -> None:
        self.mark: int | None = None
        self.results: list[Any] = []


def _closed(conn: Connection) -> bool:
    """Whether `conn` can no longer be used. When a connection closes (the
    server went away), asyncpg's pool takes it back at once, and the proxy we
    hold then refuses every call, `is_closed()` included."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True


def _runs(batch: Sequence[_Job]) -> list[tuple[Bulk[Any, Any], list[Any]]]:
    """Split a batch into runs of consecutive operations of the same kind."""
    runs: list[tuple[Bulk[Any, Any], list[Any]]] = []
    for bulk, arg, _ in batch:
        if runs and runs[-1][0] is bulk:
            runs[-1][1].append(arg)
        else:
            runs.append((bulk, [arg]))
    return runs
