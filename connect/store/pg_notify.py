"""PostgreSQL notifications (`LISTEN`/`NOTIFY`) on one dedicated connection.

A notification is sent inside the transaction that makes its news true
(`pg_notify` in the same commit), so a listener never hears of a change it
cannot read yet. Notifications are not durable: one sent while the listening
connection is down is lost. So every callback is also called with the empty
payload once the connection is back ("something may have been missed"), and
whoever listens keeps a slow sweep of its own for what a lost notification
would have told it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

import asyncpg
import tenacity

from connect.waiting import wait_event

log = logging.getLogger(__name__)

#: Reconnect backoff bounds, in seconds (exponential, with jitter).
RECONNECT_MIN: Final = 0.1
RECONNECT_MAX: Final = 5.0
#: How often a quiet listening connection is checked for having died unnoticed.
LIVENESS_CHECK: Final = 5.0

Callback = Callable[[str], None]

_BACKOFF: Final = tenacity.wait_exponential(multiplier=RECONNECT_MIN, max=RECONNECT_MAX) + tenacity.wait_random(
    0, RECONNECT_MIN
)


class PostgresListener:
    """Calls back for notifications on the channels registered with `add`."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._callbacks: dict[str, list[Callback]] = {}
        self._conn: asyncpg.Connection[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        #: Resolved once the first connection listens (or failed to connect).
        self._connected: asyncio.Future[None] | None = None
        #: The channels the current connection listens on.
        self._listening: set[str] = set()
        #: One statement at a time on the connection (a second one at once
        #: fails: a LISTEN would be lost, or the liveness check taken for a loss).
        self._using_conn = asyncio.Lock()
        self._closed = False

    async def add(self, channel: str, callback: Callback) -> None:
        """Call `callback(payload)` for each notification on `channel` from now
        on (and with "" after a reconnect)."""
        self._callbacks.setdefault(channel, []).append(callback)
        if self._task is None:
            self._connected = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._main(self._connected), name="postgres-listener")
        assert self._connected is not None
        # Another add() may be connecting: listening starts once it is done
        # (the connection listens on every channel known by then).
        await asyncio.shield(self._connected)
        async with self._using_conn:
            conn = self._conn
            if channel not in self._listening and conn is not None and not conn.is_closed():
                self._listening.add(channel)
                with contextlib.suppress(asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
                    await conn.add_listener(channel, self._on_notification)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _on_notification(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        for callback in self._callbacks.get(channel, ()):
            try:
                callback(str(payload))
            except Exception:
                log.exception("a notification callback on %s failed", channel)

    async def _connect(self) -> asyncpg.Connection[Any]:
        async for attempt in tenacity.AsyncRetrying(
            wait=_BACKOFF,
            retry=tenacity.retry_if_exception_type((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)),
            before_sleep=lambda state: log.warning(
                "notifications: cannot connect to PostgreSQL (%s); retrying",
                state.outcome and state.outcome.exception(),
            ),
        ):
            with attempt:
                conn: asyncpg.Connection[Any] = await asyncpg.connect(self._dsn)
                self._listening = set()
                try:
                    # Channels added while this listens are listened on too.
                    while missing := [c for c in self._callbacks if c not in self._listening]:
                        for channel in missing:
                            self._listening.add(channel)
                            await conn.add_listener(channel, self._on_notification)
                except BaseException:
                    await conn.close()
                    raise
                return conn
        raise AssertionError("unreachable: the retry loop retries forever")

    async def _main(self, connected: asyncio.Future[None]) -> None:
        reconnect = False
        while not self._closed:
            try:
                self._conn = await self._connect()
            except BaseException as exc:
                if not connected.done():
                    connected.set_exception(exc)
                raise
            if not connected.done():
                connected.set_result(None)
            if reconnect:
                log.info("notifications: reconnected to PostgreSQL")
                for channel in list(self._callbacks):
                    self._on_notification(None, 0, channel, "")
            reconnect = True
            try:
                await self._until_lost(self._conn)
            finally:
                with contextlib.suppress(Exception):
                    await self._conn.close(timeout=1)
                self._conn = None
            log.warning("notifications: lost the connection to PostgreSQL; reconnecting")

    async def _until_lost(self, conn: asyncpg.Connection[Any]) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        while not conn.is_closed():
            if await wait_event(lost, LIVENESS_CHECK):
                return
            try:
                async with self._using_conn:
                    await conn.execute("SELECT 1", timeout=LIVENESS_CHECK)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                return
