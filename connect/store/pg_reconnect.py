"""What counts as a lost PostgreSQL connection, and how the store rides it out.

A server restart (`pg_ctl restart -m fast`, a failover, a network cut) closes
every connection the store holds, and for a few seconds new ones are refused
("the database system is starting up"). The store then retries the operation
that met the loss on a fresh connection, with exponential backoff and full
jitter (the first waits are tens of milliseconds, none is longer than
`MAX_BACKOFF`), for at most `reconnect_timeout` seconds (default
`DEFAULT_RECONNECT_TIMEOUT`); past that the operation fails with
`StoreUnavailable`. Every retry is logged as a warning, the recovery as an
info line.

Only a lost connection is retried: an error the server reports for a
statement (a constraint, a bad value) is the caller's, at once.

The fast path pays nothing for this: an operation runs once, and the retry
machinery is built only after it met a lost connection.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import asyncpg
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay, wait_random_exponential

log = logging.getLogger("connect.store")

T = TypeVar("T")

#: Seconds an operation keeps retrying a lost connection before it fails: long
#: enough for a restart or a managed failover (typically well under a minute).
DEFAULT_RECONNECT_TIMEOUT: Final = 60.0
#: Upper bound of the backoff's first wait, in seconds; it doubles per attempt.
FIRST_BACKOFF: Final = 0.05
#: No wait between two attempts is longer than this, in seconds.
MAX_BACKOFF: Final = 2.0


class ConnectionLost(Exception):
    """The connection an operation ran on was lost; the operation may be retried."""


class StoreUnavailable(RuntimeError):
    """PostgreSQL stayed unreachable for longer than the reconnect timeout."""


# Errors that mean "this connection is gone" or "no connection can be made yet",
# never "this statement is wrong".
_LOST: Final[tuple[type[BaseException], ...]] = (
    ConnectionLost,
    OSError,  # refused, reset, unreachable: the socket itself
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, and a connection closed mid-operation
    asyncpg.AdminShutdownError,  # 57P01: terminated by `pg_ctl stop/restart -m fast`
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.TooManyConnectionsError,  # 53300: transient while old backends exit
    # The client's protocol state is broken (seen when a server shutdown
    # interrupts an operation): that connection is unusable, a fresh one is not.
    asyncpg.InternalClientError,
)


def is_connection_lost(exc: BaseException) -> bool:
    return isinstance(exc, _LOST)


def validate_reconnect_timeout(seconds: float) -> float:
    if not seconds > 0:
        raise ValueError(f"reconnect_timeout must be a positive number of seconds, got {seconds!r}")
    return seconds


async def with_reconnect(operation: Callable[[], Awaitable[T]], *, timeout: float, what: str) -> T:
    """Run `operation`; while it fails with a lost connection, run it again
    (see the module docstring). `operation` must be safe to run again after
    it failed that way: it takes a fresh connection each time."""
    try:
        return await operation()
    except Exception as exc:
        if not is_connection_lost(exc):
            raise
        log.warning("PostgreSQL connection lost during %s (%s); reconnecting", what, _describe(exc))

    def give_up(state: RetryCallState) -> T:
        assert state.outcome is not None
        last = state.outcome.exception()
        raise StoreUnavailable(
            f"PostgreSQL was unreachable for {timeout:g} s ({state.attempt_number} attempts at {what}); "
            f"last error: {_describe(last)}"
        ) from last

    def before_sleep(state: RetryCallState) -> None:
        assert state.outcome is not None and state.next_action is not None
        log.warning(
            "PostgreSQL still unreachable for %s (%s); attempt %d in %.2f s",
            what,
            _describe(state.outcome.exception()),
            state.attempt_number + 1,
            state.next_action.sleep,
        )

    retrying = AsyncRetrying(
        retry=retry_if_exception(is_connection_lost),
        wait=wait_random_exponential(multiplier=FIRST_BACKOFF, max=MAX_BACKOFF),
        stop=stop_after_delay(timeout),
        before_sleep=before_sleep,
        retry_error_callback=give_up,
    )

    async def attempt() -> T:  # a coroutine function, which tenacity awaits (a lambda it would not)
        return await operation()

    result: T = await retrying(attempt)
    log.info("PostgreSQL reachable again: %s went through", what)
    return result


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no error"
    cause = exc.__cause__ if isinstance(exc, ConnectionLost) and exc.__cause__ is not None else exc
    return f"{type(cause).__name__}: {cause}"
