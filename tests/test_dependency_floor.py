"""The oldest releases pyproject.toml accepts work: a focused part of the suite runs on them.

The lower bounds of `websockets`, `pydantic`, `uvicorn`, `starlette` and
`prometheus-client` are read from pyproject.toml,
those exact releases are installed (once, cached under `.venv/floor/`) into a
directory put first on the path, and the subset runs in a child pytest: the
gateway's handshakes and its HTTP answers, frames both ways, client masking,
option and settings validation, typed outputs (pydantic serialization), and events run to completion by real
`connect dev` and worker processes, and the API port's HTTP guard and
one-write transport (which build on uvicorn's httptools protocol), and the
metrics: HTTP answers counted by route template (which reads Starlette's
routes) and `/metrics` after a load. A release
that cannot serve them must not be declared.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORED = ("websockets", "pydantic", "uvicorn", "starlette", "prometheus-client")
SUBSET = [
    "tests/test_websocket.py",
    "tests/worker/test_masking.py",
    "tests/gateway/test_handshake_close_codes.py",
    "tests/sdk/test_sdk_validation.py",
    "tests/sdk/test_sdk_config.py",
    "tests/sdk/test_sdk_settings.py",
    "tests/sdk/test_sdk_typed_outputs.py",
    "tests/api/test_guard.py",
    "tests/api/test_corking.py",
    "tests/e2e/test_end_to_end.py::test_200_events_complete_a_three_step_function",
    "tests/e2e/test_end_to_end.py::test_step_fails_twice_then_succeeds_on_attempt_three",
    "tests/metrics/test_labels.py",
    "tests/e2e/test_metrics.py::test_counters_add_up_after_a_load",
]


def declared_floors() -> dict[str, str]:
    """`name>=X` of each floored dependency, as pyproject.toml declares it."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for requirement in dependencies:
        found = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)\s*(?:,.*)?", requirement)
        if found and found[1] in FLOORED:
            floors[found[1]] = found[2]
    assert set(floors) == set(FLOORED), f"pyproject.toml must declare a lower bound for each of {FLOORED}"
    return floors


def install(floors: dict[str, str]) -> Path:
    target = ROOT / ".venv" / "floor" / "-".join(f"{name}-{version}" for name, version in sorted(floors.items()))
    done = target / ".installed"
    if not done.exists():
        pins = [f"{name}=={version}" for name, version in floors.items()]
        pip = [sys.executable, "-m", "pip", "install", "-q", "--upgrade", "--target", str(target), *pins]
        installed = subprocess.run(pip, capture_output=True, text=True, timeout=300)
        assert installed.returncode == 0, f"could not install {pins}:\n{installed.stdout}{installed.stderr}"
        done.touch()
    return target


@pytest.mark.timeout(600)
def test_the_declared_floors_pass_the_focused_suite() -> None:
    floors = declared_floors()
    target = install(floors)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}
    probe = f"import importlib.metadata as m; print(*(m.version(name) for name in {FLOORED!r}))"
    versions = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True)
    wanted = [_release(floors[name]) for name in FLOORED]
    assert [_release(v) for v in versions.stdout.split()] == wanted, versions.stderr
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SUBSET],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert run.returncode == 0, f"the suite fails on {floors}:\n{run.stdout[-6000:]}{run.stderr[-2000:]}"


def _release(version: str) -> tuple[int, ...]:
    """`2.8` and `2.8.0` are one release."""
    parts = [int(part) for part in version.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)
