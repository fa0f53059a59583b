"""The command line's process-wide settings."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from connect import cli
from tests.postgres import PostgresServer


def test_commands_run_with_the_documented_gc_thresholds() -> None:
    # In a child process: the setting is process-wide and must not leak into this one.
    code = "import asyncio, gc; from connect import cli; cli.run(asyncio.sleep(0)); print(gc.get_threshold())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == str(cli.GC_THRESHOLDS)
    assert cli.GC_THRESHOLDS != gc.get_threshold()  # not Python's defaults, which this process keeps


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["worker", "examples.hello:client", "--poll-window-ms", "abc"], {}, "--poll-window-ms must be a number"),
        (["dev", "--poll-window-ms", "5000"], {}, "--poll-window-ms must be between 0 (off) and 1000 ms"),
        (["dev"], {"CONNECT_POLL_WINDOW_MS": "-2"}, "CONNECT_POLL_WINDOW_MS must be between 0 (off) and 1000 ms"),
        (["worker", "examples.hello:client", "--stall-threshold", "-1"], {}, "--stall-threshold must be 0 (never)"),
    ],
)
def test_a_bad_poll_window_stops_the_command_with_its_reason(
    args: list[str], env: dict[str, str], message: str, tmp_path: Path
) -> None:
    db = tmp_path / "x.db"
    full_env = {k: v for k, v in os.environ.items() if k != "CONNECT_POLL_WINDOW_MS"} | env
    full_env["CONNECT_API_URL"] = "http://127.0.0.1:9"  # a worker that got as far as connecting would fail
    extra = ["--db", str(db), "--port", "0", "--gateway-port", "0"] if args[0] == "dev" else ["--no-signals"]
    out = subprocess.run(
        [sys.executable, "-m", "connect", *args, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode != 0
    assert message in out.stderr
    assert not db.exists()  # refused before anything started


@pytest.mark.parametrize(
    ("args", "env", "seconds"),
    [
        (["dev"], {}, 7 * 86400.0),
        (["dev", "--history-retention", "12h"], {"CONNECT_HISTORY_RETENTION": "1d"}, 12 * 3600.0),
        (["dev"], {"CONNECT_HISTORY_RETENTION": "30m"}, 1800.0),
        (["serve", "--history-retention", "forever"], {}, None),
    ],
)
def test_history_retention_from_flag_env_or_default(
    args: list[str], env: dict[str, str], seconds: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONNECT_HISTORY_RETENTION", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = cli._platform_settings(cli.build_parser().parse_args(args))
    assert settings.history_retention == seconds


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--history-retention", "7 days"], {}, "connect dev: --history-retention: '7 days' is not a duration"),
        (["--history-retention", "10s"], {}, "--history-retention: '10s' is shorter than the minimum of 60 s"),
        ([], {"CONNECT_HISTORY_RETENTION": "never"}, "CONNECT_HISTORY_RETENTION: 'never' is not a duration"),
    ],
)
def test_a_bad_history_retention_stops_the_command_with_its_reason(
    args: list[str], env: dict[str, str], message: str, tmp_path: Path
) -> None:
    db = tmp_path / "x.db"
    full_env = {k: v for k, v in os.environ.items() if k != "CONNECT_HISTORY_RETENTION"} | env
    out = subprocess.run(
        [sys.executable, "-m", "connect", "dev", *args, "--db", str(db), "--port", "0", "--gateway-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode != 0
    assert message in out.stderr
    assert not db.exists()  # refused before anything started


@pytest.mark.parametrize(
    ("args", "env", "executor_id", "lease"),
    [
        (["dev"], {}, None, 30.0),
        (["dev", "--executor-id", "exec-7", "--owner-lease", "12"], {"CONNECT_EXECUTOR_ID": "env"}, "exec-7", 12.0),
        (["serve"], {"CONNECT_EXECUTOR_ID": "exec-env"}, "exec-env", 30.0),
    ],
)
def test_executor_id_and_owner_lease_from_flag_env_or_default(
    args: list[str], env: dict[str, str], executor_id: str | None, lease: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONNECT_EXECUTOR_ID", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = cli._platform_settings(cli.build_parser().parse_args(args))
    assert (settings.executor_id, settings.owner_lease) == (executor_id, lease)


def test_a_non_positive_owner_lease_is_refused() -> None:
    with pytest.raises(SystemExit, match="--owner-lease must be positive"):
        cli._platform_settings(cli.build_parser().parse_args(["dev", "--owner-lease", "0"]))


_SERVE_KEYS = ["--signing-key", "signkey-test-00112233445566778899aabbccddeeff", "--event-key", "k", "--env", "test"]


def _platform(
    args: list[str], env: dict[str, str], tmp_path: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CONNECT_DATABASE", "CONNECT_DB"))}
    return subprocess.run(
        [sys.executable, "-m", "connect", *args, "--port", "0", "--gateway-port", "0"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean | env,
        cwd=tmp_path,
    )


@pytest.mark.parametrize("command", [["dev"], ["serve", *_SERVE_KEYS]], ids=["dev", "serve"])
@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["--database-url", "mysql://u:hunter2@db/x"],
            {},
            "--database-url must be a PostgreSQL URL, postgresql://user:password@host:port/database "
            "(or postgres://...), got one with scheme 'mysql'",
        ),
        ([], {"CONNECT_DATABASE_URL": "sqlite:///x.db"}, "CONNECT_DATABASE_URL must be a PostgreSQL URL"),
        (["--database-url", "db.example.com/x"], {}, "--database-url must be a PostgreSQL URL"),
        (["--database-pool-size", "4"], {}, "--database-pool-size sizes the PostgreSQL pool; it needs --database-url"),
        (
            ["--database-url", "postgresql://db/x", "--database-pool-size", "1"],
            {},
            "--database-pool-size must be between 2 (one writer, one reader) and 64, got 1",
        ),
        (
            ["--database-url", "postgresql://db/x"],
            {"CONNECT_DATABASE_POOL_SIZE": "many"},
            "CONNECT_DATABASE_POOL_SIZE must be a whole number of connections, got 'many'",
        ),
        (
            ["--database-url", "postgres://db/x", "--db", "x.db"],
            {},
            "--db names a SQLite file, --database-url a PostgreSQL database: give one",
        ),
        (
            ["--database-url", "postgres://db/x"],
            {"CONNECT_DB": "x.db"},
            "CONNECT_DB names a SQLite file, --database-url a PostgreSQL database: give one",
        ),
    ],
    ids=["scheme", "env-scheme", "no-scheme", "pool-without-url", "pool-too-small", "pool-not-a-number", "db-and-url",
         "env-db-and-url"],
)  # fmt: skip
def test_bad_store_settings_stop_the_command_with_status_2_and_the_reason(
    command: list[str], args: list[str], env: dict[str, str], message: str, tmp_path: Path
) -> None:
    out = _platform([*command, *args], env, tmp_path)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert "hunter2" not in out.stderr  # a password is never repeated
    assert list(tmp_path.iterdir()) == []  # refused before anything started


def test_an_unreachable_database_stops_the_command_with_the_reason(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        out = _platform(["dev", "--database-url", f"postgresql://u:hunter2@127.0.0.1:{port}/x"], {}, tmp_path)
    assert out.returncode == 1
    assert f"cannot open the PostgreSQL store at postgresql://u:***@127.0.0.1:{port}/x" in out.stderr
    assert "hunter2" not in out.stderr
    assert "Traceback" not in out.stderr


def test_the_database_url_from_the_environment_selects_postgresql(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = postgres_server.create_database()
    proc = subprocess.Popen(
        [sys.executable, "-m", "connect", "dev", "--port", "0", "--gateway-port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("CONNECT_DB")}
        | {"CONNECT_DATABASE_URL": url, "CONNECT_DATABASE_POOL_SIZE": "3"},
        cwd=tmp_path,
    )
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "ready:" in line or "Traceback" in line:
                break
        assert f"db={url}" in "".join(lines), lines
        assert list(tmp_path.iterdir()) == []  # no SQLite file
        tables = postgres_server.psql("SELECT count(*) FROM runs", database=url.rsplit("/", 1)[1])
        assert tables == "0"
    finally:
        proc.terminate()
        assert proc.wait(60) == 0


@pytest.mark.parametrize(
    ("args", "env", "roles", "process_id", "executor_id", "ttl", "gateway_url"),
    [
        (["dev"], {}, {"api", "gateway", "executor"}, None, None, 15.0, None),
        (["dev", "--role", "all"], {}, {"api", "gateway", "executor"}, None, None, 15.0, None),
        (
            ["dev", "--role", "gateway", "--role", "api", "--database-url", "postgresql://db/x", "--process-id", "gw-1",
             "--process-ttl", "6", "--gateway-url", "wss://gw-1.example.com/v0/connect"],
            {},
            {"api", "gateway"}, "gw-1", "gw-1", 6.0, "wss://gw-1.example.com/v0/connect",
        ),
        (
            ["dev", "--database-url", "postgresql://db/x", "--executor-id", "ex-1"],
            {"CONNECT_ROLES": "executor", "CONNECT_PROCESS_ID": "p-9", "CONNECT_PROCESS_TTL": "30",
             "CONNECT_GATEWAY_URL": "ws://10.0.0.7:8289/v0/connect"},
            {"executor"}, "p-9", "ex-1", 30.0, "ws://10.0.0.7:8289/v0/connect",
        ),
        (["dev", "--role", "api,executor", "--database-url", "postgresql://db/x"], {}, {"api", "executor"}, None, None,
         15.0, None),
    ],
    ids=["default", "all", "flags", "environment", "comma-separated"],
)  # fmt: skip
def test_roles_and_the_process_registry_settings_from_flags_or_environment(
    args: list[str],
    env: dict[str, str],
    roles: set[str],
    process_id: str | None,
    executor_id: str | None,
    ttl: float,
    gateway_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("ROLES", "PROCESS_ID", "PROCESS_TTL", "GATEWAY_URL", "EXECUTOR_ID", "DATABASE_URL"):
        monkeypatch.delenv(f"CONNECT_{name}", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = cli._platform_settings(cli.build_parser().parse_args(args))
    assert settings.roles == frozenset(roles)
    assert settings.split == (roles != {"api", "gateway", "executor"})
    assert (settings.process_id, settings.executor_id) == (process_id, executor_id)
    assert (settings.process_ttl, settings.gateway_url) == (ttl, gateway_url)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--role", "gateway"], {}, "--role gateway: roles in separate processes share PostgreSQL; give"),
        ([], {"CONNECT_ROLES": "api,executor"}, "CONNECT_ROLES api,executor: roles in separate processes share"),
        (["--role", "scheduler"], {}, "--role: unknown role 'scheduler': choose from api, gateway, executor, all"),
        (["--role", ","], {}, "--role: no role given"),
        (["--gateway-url", "http://gw/v0/connect"], {}, "--gateway-url must be a ws:// or wss:// URL"),
        (["--process-ttl", "0.5"], {}, "--process-ttl must be between 1 and 3600 seconds, not 0.5"),
        (["--process-ttl", "soon"], {}, "--process-ttl must be a number of seconds, not 'soon'"),
    ],
    ids=["gateway-on-sqlite", "env-roles-on-sqlite", "unknown-role", "empty-role", "http-gateway-url", "ttl-too-short",
         "ttl-not-a-number"],
)  # fmt: skip
def test_bad_role_settings_stop_the_command_with_status_2_and_the_reason(
    args: list[str], env: dict[str, str], message: str, tmp_path: Path
) -> None:
    out = _platform(["dev", *args], env, tmp_path)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []  # refused before anything started


def _connect(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    return subprocess.run(
        [sys.executable, "-m", "connect", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean | (env or {}),
        cwd=tmp_path,
    )


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    out = _connect(["--version"], tmp_path)
    assert out.returncode == 0
    assert out.stdout.strip() == f"connect {version('connect-platform')}"


@pytest.mark.parametrize("flag", ["--port", "--gateway-port"])
def test_a_port_out_of_range_is_a_usage_error(flag: str, tmp_path: Path) -> None:
    out = _connect(["dev", flag, "70000"], tmp_path)
    assert out.returncode == 2
    assert f"argument {flag}: 70000 is out of range: a port is 1 to 65535" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_database_file_that_cannot_be_opened_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    db = tmp_path / "missing" / "dir" / "connect.db"
    out = _connect(["dev", "--db", str(db), "--port", "0", "--gateway-port", "0"], tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"connect dev: cannot open the SQLite store at {db}: unable to open database file: "
        "check that its directory exists and is writable, or choose another file with --db (or CONNECT_DB)"
    )
    assert "Traceback" not in out.stderr


def test_an_unreachable_database_names_the_setting_to_fix(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        out = _connect(["dev", "--database-url", f"postgresql://u:p@127.0.0.1:{port}/x"], tmp_path)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"connect dev: cannot open the PostgreSQL store at postgresql://u:***@127.0.0.1:{port}/x")
    assert last.endswith("check that the server is up and the URL is right (--database-url, or CONNECT_DATABASE_URL)")


def test_every_environment_variable_the_commands_read_is_in_their_help(tmp_path: Path) -> None:
    import re

    root = Path(cli.__file__).parent
    names: set[str] = set()
    for path in root.rglob("*.py"):
        names |= set(re.findall(r"\"(CONNECT_[A-Z_]+)\"", path.read_text()))
    assert "CONNECT_LOG_FORMAT" in names and "CONNECT_API_URL" in names
    parser = cli.build_parser()
    helps = parser.format_help()
    for action in parser._subparsers._group_actions if parser._subparsers else []:  # type: ignore[attr-defined]
        for sub in getattr(action, "choices", {}).values():
            helps += sub.format_help()
    flat = " ".join(helps.split())
    assert sorted(n for n in names if n not in flat) == []


def test_a_bad_log_format_in_the_environment_is_refused(tmp_path: Path) -> None:
    out = _connect(["dev"], tmp_path, {"CONNECT_LOG_FORMAT": "xml"})
    assert out.returncode == 2
    assert "CONNECT_LOG_FORMAT must be text or json, not 'xml'" in out.stderr


def test_a_worker_health_port_in_use_is_one_line_and_status_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # the probes listen on every interface
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "connect", "worker", "examples.hello:client", "--health-port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
            | {"CONNECT_API_URL": "http://127.0.0.1:9"},
            cwd=Path(__file__).resolve().parents[1],
        )
    assert out.returncode == 1, out.stderr
    assert f"the health probes port {port} on " in out.stderr
    assert "is already in use: stop the process that holds it, or choose another port with --health-port" in out.stderr
    assert "Traceback" not in out.stderr
