"""The command line's process-wide settings."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from connect import cli


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
