"""The lowest uvicorn that pyproject.toml declares runs the HTTP guard and its
corked transport: it is installed on its own and their tests run against it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def declared_uvicorn() -> tuple[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [spec] = [d for d in deps if re.match(r"uvicorn\b", d)]
    match = re.fullmatch(r"uvicorn>=([\d.]+),<([\d.]+)", spec)
    assert match, f"uvicorn is declared as {spec!r}: give it a tested floor and ceiling"
    return match.group(1), match.group(2)


def test_the_declared_floor_of_uvicorn_serves_the_guard(tmp_path: Path) -> None:
    floor, _ = declared_uvicorn()
    target = tmp_path / "floor"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), f"uvicorn=={floor}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}
    version = subprocess.run(
        [sys.executable, "-c", "import uvicorn; print(uvicorn.__version__)"], env=env, capture_output=True, text=True
    )
    assert version.stdout.strip() == floor
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/api/test_guard.py",
            "tests/api/test_corking.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
