"""The command line's process-wide settings."""

from __future__ import annotations

import gc
import subprocess
import sys

from connect import cli


def test_commands_run_with_the_documented_gc_thresholds() -> None:
    # In a child process: the setting is process-wide and must not leak into this one.
    code = "import asyncio, gc; from connect import cli; cli.run(asyncio.sleep(0)); print(gc.get_threshold())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == str(cli.GC_THRESHOLDS)
    assert cli.GC_THRESHOLDS != gc.get_threshold()  # not Python's defaults, which this process keeps
