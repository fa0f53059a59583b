"""Command line: `connect dev`, `serve` and `worker MODULE:ATTR`, and the client commands (`connect.commands`)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, NoReturn, TypeVar

log = logging.getLogger("connect")

T = TypeVar("T")

#: The cyclic garbage collector's thresholds in the platform's processes (`connect
#: dev`, `connect serve`), and in `connect worker` only when asked (`--raise-gc-thresholds`,
#: `CONNECT_RAISE_GC_THRESHOLDS=1`): a worker runs the user's code, and the collector
#: is a process-wide setting that is the user's to choose (Python's defaults are
#: 700, 10, 10). A platform or worker process allocates and
#: frees many small objects per step; at the defaults the collector runs thousands
#: of times a second under load, and every pass of an older generation walks every
#: live run, request and connection. Objects freed by reference counting, which is
#: nearly all of them, never count toward the first threshold, so this delays only
#: the reclaiming of reference cycles. Measured with `bench.durable`: `connect dev`
#: spends 115 instead of 135 µs of CPU per step (see bench/README.md).
GC_THRESHOLDS = (50_000, 50, 100)


#: `connect worker` raises the collector's thresholds to GC_THRESHOLDS when this is "1".
GC_ENV_VAR = "CONNECT_RAISE_GC_THRESHOLDS"


def run(coro: Coroutine[Any, Any, T], *, raise_gc_thresholds: bool = True) -> T:
    """Run `coro` as the main coroutine of a process, on uvloop where it is
    installed; with `GC_THRESHOLDS` unless `raise_gc_thresholds` is False (a
    process that runs user code leaves the collector as the user set it)."""
    if raise_gc_thresholds:
        gc.set_threshold(*GC_THRESHOLDS)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run(coro)
    return uvloop.run(coro)


def _port(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is out of range: a port is 1 to 65535 (0: any free port)")
    return value


def _usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    """Stop with status 2, as argparse does for a bad argument."""
    print(f"connect {args.command}: {message}", file=sys.stderr)
    raise SystemExit(2)


def _store_settings(args: argparse.Namespace, default_db: str) -> tuple[str, str | None, int | None]:
    """(SQLite path, PostgreSQL URL or None, pool size or None) from the flags,
    else the environment. Each setting names one engine: one for the other
    engine is refused rather than ignored."""
    from connect.store.open import check_database_url, check_pool_size

    url = args.database_url
    url_source = "--database-url"
    if url is None and os.environ.get("CONNECT_DATABASE_URL"):
        url, url_source = os.environ["CONNECT_DATABASE_URL"], "CONNECT_DATABASE_URL"
    db, db_source = args.db, "--db"
    if db is None and os.environ.get("CONNECT_DB"):
        db, db_source = os.environ["CONNECT_DB"], "CONNECT_DB"
    pool, pool_source = args.database_pool_size, "--database-pool-size"
    if pool is None and os.environ.get("CONNECT_DATABASE_POOL_SIZE"):
        pool, pool_source = os.environ["CONNECT_DATABASE_POOL_SIZE"], "CONNECT_DATABASE_POOL_SIZE"
    try:
        if url is None:
            if pool is not None:
                raise ValueError(f"{pool_source} sizes the PostgreSQL pool; it needs --database-url")
            return db or default_db, None, None
        check_database_url(url, url_source)
        if db is not None:
            raise ValueError(f"{db_source} names a SQLite file, {url_source} a PostgreSQL database: give one")
        return default_db, url, None if pool is None else check_pool_size(pool, pool_source)
    except ValueError as exc:
        _usage_error(args, str(exc))


def _platform_settings(args: argparse.Namespace) -> Any:
    from connect.roles import PlatformSettings

    db, database_url, pool_size = _store_settings(args, args.default_db)
    settings = PlatformSettings(
        host=args.host,
        port=args.port,
        gateway_port=args.gateway_port,
        db=db,
        database_url=database_url,
        checkpoint_steps=args.checkpoint_steps,
        poll_window=_poll_window(args),
        executor_id=args.executor_id or None,
        history_retention=_history_retention(args),
    )
    if pool_size is not None:
        settings.database_pool_size = pool_size
    settings.metrics_port = _metrics_port(args)
    _split_settings(args, settings)
    for name in (
        "lease_duration",
        "extend_lease_interval",
        "max_lease_lapses",
        "drain_timeout",
        "max_message_bytes",
        "max_event_bytes",
        "max_request_bytes",
        "apps_per_connection",
        "max_connections",
        "max_connections_per_instance",
        "max_handshakes",
        "max_handshakes_per_peer",
        "handshake_timeout",
        "owner_lease",
    ):
        value = getattr(args, name)
        if value is not None:
            if isinstance(value, int | float) and value <= 0:
                raise SystemExit(f"--{name.replace('_', '-')} must be positive")
            setattr(settings, name, value)
    return settings


def _metrics_port(args: argparse.Namespace) -> int | None:
    """`--metrics-port`, else `CONNECT_METRICS_PORT`, else None (no port of its own)."""
    source, text = "--metrics-port", args.metrics_port
    if text is None:
        source, text = "CONNECT_METRICS_PORT", os.environ.get("CONNECT_METRICS_PORT", "").strip() or None
    if text is None:
        return None
    try:
        port = int(text)
    except ValueError:
        _usage_error(args, f"{source} must be a port number, not {text!r}")
    if not 0 <= port <= 65535:
        _usage_error(args, f"{source} must be between 0 and 65535, not {port}")
    return port


def _split_settings(args: argparse.Namespace, settings: Any) -> None:
    """`--role`, `--gateway-url`, `--process-id` and `--process-ttl`, else
    their environment variables. Roles other than all of them share their work
    through PostgreSQL: without `--database-url` that is a usage error."""
    from connect.roles.settings import parse_roles

    role_values = args.role or [os.environ.get("CONNECT_ROLES", "") or "all"]
    source = "--role" if args.role else "CONNECT_ROLES"
    try:
        settings.roles = parse_roles(role_values)
    except ValueError as exc:
        _usage_error(args, f"{source}: {exc}")
    if settings.split and settings.database_url is None:
        roles = ",".join(sorted(settings.roles))
        _usage_error(
            args,
            f"{source} {roles}: roles in separate processes share PostgreSQL; give --database-url "
            "(or CONNECT_DATABASE_URL), or run every role in one process with --role all",
        )
    url = args.gateway_url or os.environ.get("CONNECT_GATEWAY_URL") or None
    if url is not None:
        if not url.startswith(("ws://", "wss://")):
            _usage_error(args, f"--gateway-url must be a ws:// or wss:// URL, not {url!r}")
        settings.gateway_url = url
    settings.process_id = args.process_id or os.environ.get("CONNECT_PROCESS_ID") or None
    if settings.executor_id is None and settings.process_id is not None:
        settings.executor_id = settings.process_id
    ttl = args.process_ttl
    if ttl is None and os.environ.get("CONNECT_PROCESS_TTL"):
        ttl = os.environ["CONNECT_PROCESS_TTL"]
    if ttl is not None:
        try:
            value = float(ttl)
        except ValueError:
            _usage_error(args, f"--process-ttl must be a number of seconds, not {ttl!r}")
        if not 1.0 <= value <= 3600.0:
            _usage_error(args, f"--process-ttl must be between 1 and 3600 seconds, not {ttl}")
        settings.process_ttl = value


def _poll_window(args: argparse.Namespace, default: float | None = None) -> float:
    """`--poll-window-ms`, else `CONNECT_POLL_WINDOW_MS`, else `default` (the
    platform's, `polling.DEFAULT_WINDOW`, when None), as seconds (0: off)."""
    from connect import polling

    default = polling.DEFAULT_WINDOW if default is None else default
    try:
        if args.poll_window_ms is not None:
            return polling.parse_window_ms(args.poll_window_ms, "--poll-window-ms", default)
        return polling.window_from_env(default)
    except ValueError as exc:
        raise SystemExit(f"connect {args.command}: {exc}") from None


def _history_retention(args: argparse.Namespace) -> float | None:
    """`--history-retention`, else `CONNECT_HISTORY_RETENTION`, else 7 days, as seconds (None: forever)."""
    from connect.executor.retention import DEFAULT_RETENTION, parse_retention

    source, text = "--history-retention", args.history_retention
    if text is None:
        source, text = "CONNECT_HISTORY_RETENTION", os.environ.get("CONNECT_HISTORY_RETENTION", "")
        if not text.strip():
            return DEFAULT_RETENTION
    try:
        return parse_retention(text)
    except ValueError as exc:
        raise SystemExit(f"connect {args.command}: {source}: {exc}") from None


def _add_poll_window_arg(parser: argparse.ArgumentParser, default_ms: str) -> None:
    parser.add_argument(
        "--poll-window-ms",
        type=str,
        default=None,
        help="the longest the event loop keeps polling after step traffic instead of sleeping; "
        f"the window adapts to the gaps between messages, up to this (default {default_ms}; 0: off; "
        "or CONNECT_POLL_WINDOW_MS)",
    )


def _serve_platform(args: argparse.Namespace, settings: Any) -> int:
    from connect.roles import DevServer, RolesServer
    from connect.store.open import StoreOpenError

    server = RolesServer(settings) if settings.split else DevServer(settings)
    try:
        return run(server.run())
    except StoreOpenError as exc:
        print(f"connect {args.command}: {exc}", file=sys.stderr)
        return 1
    except SystemExit as exc:
        # A start-up failure (a port that cannot be bound): one line, status 1.
        if not isinstance(exc.code, str):
            raise
        print(f"connect {args.command}: {exc.code}", file=sys.stderr)
        return 1


def cmd_dev(args: argparse.Namespace) -> int:
    return _serve_platform(args, _platform_settings(args))


def cmd_serve(args: argparse.Namespace) -> int:
    from connect.gateway.auth import Keys

    # The flag, then ours, then the official self-hosted server's variable (as a worker reads them).
    env = os.environ
    signing_key = args.signing_key or env.get("CONNECT_SIGNING_KEY") or env.get("INNGEST_SIGNING_KEY", "")
    fallback = (
        args.signing_key_fallback
        or env.get("CONNECT_SIGNING_KEY_FALLBACK")
        or env.get("INNGEST_SIGNING_KEY_FALLBACK")
        or None
    )
    event_keys = list(args.event_key or [])
    event_keys += [k for k in env.get("CONNECT_EVENT_KEYS", "").split(",") if k.strip()]
    if not event_keys and env.get("INNGEST_EVENT_KEY", "").strip():
        event_keys = [env["INNGEST_EVENT_KEY"].strip()]
    if not signing_key:
        print("connect serve: a signing key is required (--signing-key or CONNECT_SIGNING_KEY)", file=sys.stderr)
        return 2
    if not event_keys:
        print("connect serve: at least one event key is required (--event-key or CONNECT_EVENT_KEYS)", file=sys.stderr)
        return 2
    try:
        keys = Keys.production(signing_key, fallback, event_keys, env=args.env)
    except ValueError as exc:
        print(f"connect serve: {exc}", file=sys.stderr)
        return 2
    settings = _platform_settings(args)
    settings.keys = keys
    settings.name = "connect serve"
    return _serve_platform(args, settings)


def _add_platform_args(parser: argparse.ArgumentParser, default_db: str) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address the API and gateway listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8288, help="HTTP API port (default 8288)")
    parser.add_argument("--gateway-port", type=_port, default=8289, help="worker gateway port (default 8289)")
    parser.add_argument(
        "--metrics-port",
        default=None,
        help="also serve GET /metrics on this port (the API and gateway ports serve it already; a process "
        "running neither, such as --role executor, has only this one; or CONNECT_METRICS_PORT)",
    )
    parser.set_defaults(default_db=default_db)
    parser.add_argument(
        "--db", default=None, help=f"SQLite database file, when no --database-url (default {default_db}, or CONNECT_DB)"
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="postgresql://user:password@host:port/database: keep the store in PostgreSQL instead of SQLite "
        "(or CONNECT_DATABASE_URL)",
    )
    parser.add_argument(
        "--database-pool-size",
        default=None,
        help="PostgreSQL connections the store holds: one writer, the rest for reads "
        "(default 8, 2 to 64; or CONNECT_DATABASE_POOL_SIZE)",
    )
    parser.add_argument("--lease-duration", type=float, default=None, help="request lease, seconds (default 120)")
    parser.add_argument("--extend-lease-interval", type=float, default=None, help="seconds (default 30)")
    parser.add_argument(
        "--max-lease-lapses",
        type=int,
        default=None,
        help="times a step lost with its worker is dispatched again, spending no retry, before its run fails (10)",
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=None, help="seconds SIGTERM waits for workers to leave (default 25)"
    )
    parser.add_argument("--max-message-bytes", type=int, default=None, help="WebSocket message limit (8 MiB)")
    parser.add_argument("--max-event-bytes", type=int, default=None, help="one event on /e/ (512 KiB)")
    parser.add_argument("--max-request-bytes", type=int, default=None, help="one /e/ request body (3 MiB)")
    parser.add_argument("--apps-per-connection", type=int, default=None, help="apps one worker connection serves (10)")
    parser.add_argument(
        "--max-connections", type=int, default=None, help="live authenticated worker connections (16384)"
    )
    parser.add_argument(
        "--max-connections-per-instance", type=int, default=None, help="live connections per instance id (16)"
    )
    parser.add_argument(
        "--max-handshakes",
        type=int,
        default=None,
        help="connections not yet authenticated, at once; past it new ones are dropped at accept (1024)",
    )
    parser.add_argument(
        "--max-handshakes-per-peer",
        type=int,
        default=None,
        help="connections not yet authenticated from one peer address, at once (256)",
    )
    parser.add_argument("--handshake-timeout", type=float, default=None, help="seconds to send WORKER_CONNECT (5)")
    parser.add_argument(
        "--no-checkpoint-steps",
        dest="checkpoint_steps",
        action="store_false",
        help="one step per request for every worker (checkpoints are on by default)",
    )
    parser.add_argument(
        "--executor-id",
        default=os.environ.get("CONNECT_EXECUTOR_ID"),
        help="owner name of the runs this process drives, one per executor "
        "(CONNECT_EXECUTOR_ID; default: --process-id if given, else the host name)",
    )
    parser.add_argument(
        "--owner-lease",
        type=float,
        default=None,
        help="seconds this executor's heartbeat keeps its runs; past it other executors claim them (default 30)",
    )
    parser.add_argument(
        "--history-retention",
        default=None,
        help="how long ended runs are kept with their steps and events before they are deleted: "
        "a duration such as 7d, 12h or 30m (at least 1m), or 'forever' (default 7d; or CONNECT_HISTORY_RETENTION)",
    )
    parser.add_argument(
        "--role",
        action="append",
        default=None,
        help="what this process runs: api, gateway, executor or all (repeat, or comma-separate, for several; "
        "default all, or CONNECT_ROLES=api,gateway). Any set but all shares its work with other processes "
        "through PostgreSQL (--database-url)",
    )
    parser.add_argument(
        "--gateway-url",
        default=None,
        help="the ws:// URL workers dial to reach this gateway, handed out by /v0/connect/start "
        "(default ws://HOST:GATEWAY-PORT/v0/connect; or CONNECT_GATEWAY_URL)",
    )
    parser.add_argument(
        "--process-id",
        default=None,
        help="this process's name in the process registry, unique among live processes "
        "(default HOSTNAME-PID; or CONNECT_PROCESS_ID); also the default --executor-id",
    )
    parser.add_argument(
        "--process-ttl",
        default=None,
        help="seconds this process (and a gateway's worker connections) stays in the registry without a "
        "heartbeat; heartbeats come every third of it (default 15, 1 to 3600; or CONNECT_PROCESS_TTL)",
    )
    _add_poll_window_arg(parser, "1")


def load_apps(target: str) -> list[tuple[Any, list[Any]]]:
    """Resolve `module:attr` to a list of (client, functions) pairs.

    `attr` may be such a list, one (client, functions) pair, or a Client
    (then every function created with it is served).
    """
    from connect.sdk.client import Client

    if ":" not in target:
        raise SystemExit(f"expected MODULE:ATTR, got {target!r}")
    module_name, attr = target.split(":", 1)
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"cannot import {module_name!r}: {exc}") from exc
    try:
        value = getattr(module, attr)
    except AttributeError as exc:
        raise SystemExit(f"module {module_name!r} has no attribute {attr!r}") from exc
    if isinstance(value, Client):
        return [(value, list(value.functions))]
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], Client):
        return [(value[0], list(value[1]))]
    if isinstance(value, list) and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        return [(c, list(f)) for c, f in value]
    raise SystemExit(f"{target} is not a Client, a (client, functions) pair or a list of them")


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a worker until it has drained, then leave like any Python program
    (the user's `atexit` hooks run), with 0, or 1 when the drain deadline
    abandoned steps."""
    from connect.polling import WORKER_DEFAULT_WINDOW
    from connect.worker import connect

    if args.stall_threshold < 0:
        raise SystemExit("connect worker: --stall-threshold must be 0 (never) or a number of seconds")
    apps = load_apps(args.target)
    poll_window = _poll_window(args, default=WORKER_DEFAULT_WINDOW)
    raise_gc = args.raise_gc_thresholds or os.environ.get(GC_ENV_VAR, "") == "1"

    async def main() -> int:
        conn = await connect(
            apps,
            instance_id=args.instance_id,
            max_worker_concurrency=args.max_worker_concurrency,
            health_port=args.health_port,
            drain_timeout=None if args.drain_timeout is not None and args.drain_timeout < 0 else args.drain_timeout,
            handle_shutdown_signals=() if args.no_signals else ("SIGTERM", "SIGINT"),
            poll_window=poll_window,
            stall_threshold=None if args.stall_threshold <= 0 else args.stall_threshold,
        )
        await conn.closed
        if conn.abandoned:
            _leave_abandoning()
        return 0

    from connect.worker.readiness import HealthServerNotStarted

    try:
        code = run(main(), raise_gc_thresholds=raise_gc)
    except HealthServerNotStarted:
        return 1  # the worker has logged why, in one line
    log.info("worker exited (code %d)", code)
    return code


def _leave_abandoning() -> None:
    """The drain deadline passed with user code still running, possibly in
    threads a normal exit would wait for without bound: leave at once with 1
    (the deadline is the point; `atexit` hooks do not run on this path only)."""
    log.info("worker exited (code 1): the drain deadline abandoned steps still running")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def package_version() -> str:
    """The installed package's version (pyproject's), or the SDK's when not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("connect-platform")
    except PackageNotFoundError:
        from connect.sdk.version import SDK_VERSION

        return SDK_VERSION.rsplit(":v", 1)[-1]


def _log_format_default() -> str:
    """CONNECT_LOG_FORMAT when it names a format, else text (a bad value is refused at parse time)."""
    return os.environ.get("CONNECT_LOG_FORMAT", "").strip().lower() or "text"


def build_parser() -> argparse.ArgumentParser:
    from connect import logs

    parser = argparse.ArgumentParser(prog="connect", description="Durable Python functions over outbound workers")
    parser.add_argument("--version", action="version", version=f"connect {package_version()}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("CONNECT_LOG_LEVEL", "info"),
        help="debug, info, warning or error (default info; or CONNECT_LOG_LEVEL)",
    )
    parser.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default=_log_format_default(),
        help="text lines, or one JSON object per line with time, level, logger, message and the run, function, "
        "step and connection fields (default text; or CONNECT_LOG_FORMAT)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="open mode: API, gateway, executor and SQLite store in one process")
    _add_platform_args(dev, "connect-dev.db")
    dev.set_defaults(func=cmd_dev)

    serve = sub.add_parser("serve", help="production: the same roles, with signing and event keys required")
    _add_platform_args(serve, "connect.db")
    serve.add_argument(
        "--signing-key", default=None, help="signkey-<env>-<hex> (or CONNECT_SIGNING_KEY, else INNGEST_SIGNING_KEY)"
    )
    serve.add_argument(
        "--signing-key-fallback",
        default=None,
        help="second accepted key while rotating (CONNECT_SIGNING_KEY_FALLBACK, else INNGEST_SIGNING_KEY_FALLBACK)",
    )
    serve.add_argument(
        "--event-key",
        action="append",
        help="accepted event key; repeat for several (CONNECT_EVENT_KEYS=a,b, else INNGEST_EVENT_KEY)",
    )
    serve.add_argument("--env", default="production", help="environment name (default production)")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser(
        "worker",
        help="run a worker for the app(s) at MODULE:ATTR",
        description="Run a worker for the app(s) at MODULE:ATTR. It reaches the platform at the client's api_url, "
        "else CONNECT_API_URL (default http://127.0.0.1:8288), with the client's signing key, else "
        "CONNECT_SIGNING_KEY (and CONNECT_SIGNING_KEY_FALLBACK while rotating); events it sends use "
        "CONNECT_EVENT_KEY. The official SDK's INNGEST_* variables are read after ours (see the README's "
        "Configuration). CONNECT_GATEWAY_URL overrides the gateway URL the platform hands out.",
    )
    worker.add_argument("target", help="MODULE:ATTR naming a Client or a list of (client, functions)")
    worker.add_argument("--instance-id", default=None, help="stable worker identity (default: hostname)")
    worker.add_argument(
        "--max-worker-concurrency",
        type=int,
        default=None,
        help="steps this worker runs at once (default: no limit; or CONNECT_MAX_WORKER_CONCURRENCY)",
    )
    worker.add_argument(
        "--health-port", type=_port, default=None, help="serve GET /ready, /live and /metrics on this port"
    )
    worker.add_argument(
        "--drain-timeout",
        type=float,
        default=600.0,
        help="seconds to finish in-flight steps on SIGTERM (default 600; negative: wait forever)",
    )
    worker.add_argument("--no-signals", action="store_true", help="do not handle SIGTERM/SIGINT")
    worker.add_argument(
        "--stall-threshold",
        type=float,
        default=5.0,
        help="seconds the event loop running your functions may be blocked before the worker takes no new "
        "work and /ready answers 503 (default 5; 0: never)",
    )
    worker.add_argument(
        "--raise-gc-thresholds",
        action="store_true",
        help=f"set the garbage collector's thresholds to {GC_THRESHOLDS} in this process "
        f"(or {GC_ENV_VAR}=1; default: Python's, as your code set them)",
    )
    _add_poll_window_arg(worker, "0")
    worker.set_defaults(func=cmd_worker)

    from connect import commands

    commands.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from connect import logs

    if args.log_format not in logs.FORMATS:
        parser.error(f"CONNECT_LOG_FORMAT must be text or json, not {args.log_format!r}")
    logs.setup(args.log_level, args.log_format)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
