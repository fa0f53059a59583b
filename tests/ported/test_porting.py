"""Code written for the official Inngest Python SDK ports by changing only its imports.

`official_app.py` (functions in both handler styles, typed outputs, pydantic event data,
configured by INNGEST_* variables) and `official_unit.py` (unit tests of it with the official
`inngest.experimental.mocked`) are official-SDK code. Each test copies them, with only their
import lines rewritten (`REWRITES`), and runs the copy on this platform's SDK; and runs the
originals on the official SDK (pinned in pyproject), to show they are real official-SDK code
and that both give the same results, against the same real `connect dev`; then both again in
production mode against `connect serve`, every setting from INNGEST_* variables, while its
signing keys rotate.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import ROOT, DevServer, Proc, wait_until

HERE = Path(__file__).parent
SOURCES = ("official_app.py", "official_unit.py", "official_main.py")
#: The whole port: these lines, nothing else.
REWRITES = {
    "import inngest": "import connect as inngest",
    "from inngest.experimental import mocked": "from connect.sdk import testing as mocked",
}
NEW_KEY = "signkey-test-" + "0123456789abcdef" * 2
OLD_KEY = "signkey-test-" + "fedcba9876543210" * 2
UNKNOWN_KEY = "signkey-test-" + "00112233445566778899" * 2


def copy(dest: Path, *, port: bool) -> Path:
    """The official sources in `dest`, as they are or ported (import lines rewritten)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in SOURCES:
        lines = (HERE / name).read_text().splitlines(keepends=True)
        if port:
            lines = [REWRITES.get(line.rstrip("\n"), line.rstrip("\n")) + "\n" for line in lines]
        (dest / name).write_text("".join(lines))
    return dest


def test_the_port_changes_import_lines_only(tmp_path: Path) -> None:
    ported = copy(tmp_path / "ours", port=True)
    changed = []
    for name in SOURCES:
        before = (HERE / name).read_text().splitlines()
        after = (ported / name).read_text().splitlines()
        assert len(before) == len(after)
        changed += [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed and all(
        a.startswith(("import ", "from ")) and b.startswith(("import ", "from ")) for a, b in changed
    )
    assert {a for a, _ in changed} == set(REWRITES)


def clean_environment(**extra: str) -> dict[str, str]:
    """The process environment without any CONNECT_* or INNGEST_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONNECT_", "INNGEST_"))}
    env.update(extra)
    return env


@pytest.mark.parametrize("sdk", ["ours", "official"])
def test_unit_tests_written_for_mocked_pass_on_both(tmp_path: Path, sdk: str) -> None:
    where = copy(tmp_path / sdk, port=sdk == "ours")
    script = (
        "import official_unit as u\n"
        "names = sorted(n for n in dir(u) if n.startswith('test_'))\n"
        "for n in names: getattr(u, n)()\n"
        "print('passed', len(names))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=where,
        env=clean_environment(PYTHONPATH=f"{where}{os.pathsep}{ROOT}"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "passed 5"
    if sdk == "ours":
        assert "connect.sdk.testing" in (where / "official_unit.py").read_text()


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("dev")).start()
    yield server
    server.stop()


def start(where: Path, sdk: str, env: dict[str, str], log: Path) -> Proc:
    if sdk == "ours":
        args = [sys.executable, "-m", "connect", "worker", "official_app:client", "--instance-id", "ours"]
    else:
        args = [sys.executable, str(where / "official_main.py")]
    return Proc(args, clean_environment(PYTHONPATH=f"{where}{os.pathsep}{ROOT}", **env), log)


def wait_for_app(server: DevServer, instance_id: str, headers: dict[str, str] | None = None) -> None:
    def connected() -> bool:
        rows = httpx.get(f"{server.url}/v1/workers", headers=headers or {}, timeout=10).json()["data"]
        return any(r["instance_id"] == instance_id and "ported-app" in r["apps"] for r in rows)

    wait_until(connected, 60, f"worker {instance_id} connected")


def run_scenario(server: DevServer) -> dict[str, Any]:
    (checkout_id,) = server.send([{"name": "ported/checkout", "data": {"order_id": 7}}])
    (reorder_id,) = server.send([{"name": "ported/reorder", "data": {"order_id": 9}}])
    checkout, reorder = server.wait_runs([checkout_id, reorder_id], timeout=90)
    assert checkout["status"] == "Completed", checkout
    receipt = checkout["output"]
    [shipment_id] = receipt.pop("shipment_ids")
    (ship,) = server.wait_runs([shipment_id], timeout=90)
    assert ship["status"] == "Completed", ship
    return {"checkout": receipt, "ship": ship["output"], "reorder": reorder["output"]}


EXPECTED = {
    "checkout": {"order_id": 7, "total_cents": 1350},
    "ship": {
        "label": "order 7: 2 items",
        "packing": ["box", "tape"],
        "placed_at": "2026-12-01T09:30:00+00:00",
        "audited": True,  # by the function's middleware
    },
    "reorder": {"type": "Receipt", "order_id": 9, "total": 1350},
}


@pytest.mark.parametrize("sdk", ["ours", "official"])
def test_the_app_runs_unchanged_against_connect_dev(dev: DevServer, tmp_path: Path, sdk: str) -> None:
    where = copy(tmp_path / sdk, port=sdk == "ours")
    # Configured the official way only: INNGEST_DEV names the dev server.
    worker = start(where, sdk, {"INNGEST_DEV": dev.url}, tmp_path / f"{sdk}.log")
    try:
        wait_for_app(dev, sdk)
        assert run_scenario(dev) == EXPECTED
    finally:
        worker.stop()
    assert worker.popen.returncode == 0, worker.output()[-3000:]


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """`connect serve` mid-rotation, configured as the official self-hosted server is: the new
    key in INNGEST_SIGNING_KEY, the old one still accepted as INNGEST_SIGNING_KEY_FALLBACK."""
    server = DevServer(
        tmp_path_factory.mktemp("serve"),
        command="serve",
        event_key="evk",
        headers={"Authorization": f"Bearer {NEW_KEY}"},
    )
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(
        clean_environment(INNGEST_SIGNING_KEY=NEW_KEY, INNGEST_SIGNING_KEY_FALLBACK=OLD_KEY, INNGEST_EVENT_KEY="evk")
    )
    try:
        server.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    yield server
    server.stop()


@pytest.mark.parametrize("sdk", ["ours", "official"])
def test_production_settings_from_inngest_variables_during_a_key_rotation(
    serve: DevServer, tmp_path: Path, sdk: str
) -> None:
    """Production mode, configured by INNGEST_* only. Our worker's key is one the server never
    had, so it goes on with its INNGEST_SIGNING_KEY_FALLBACK (the new key); the official
    worker still holds the old key, which the server accepts as its fallback."""
    where = copy(tmp_path / sdk, port=sdk == "ours")
    env = {"INNGEST_BASE_URL": serve.url, "INNGEST_EVENT_KEY": "evk"}
    if sdk == "ours":
        env |= {"INNGEST_DEV": "0", "INNGEST_SIGNING_KEY": UNKNOWN_KEY, "INNGEST_SIGNING_KEY_FALLBACK": NEW_KEY}
    else:
        env |= {"INNGEST_SIGNING_KEY": OLD_KEY}
    worker = start(where, sdk, env, tmp_path / f"{sdk}.log")
    try:
        wait_for_app(serve, sdk, serve.headers)
        if sdk == "ours":
            assert "trying the fallback key" in worker.output()
        assert run_scenario(serve) == EXPECTED  # step.send_event used INNGEST_EVENT_KEY
    finally:
        worker.stop()
