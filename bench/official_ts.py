"""The official TypeScript worker's command line: Node running `bench/official_app.mjs`.

The SDK comes from the npm registry through `tests.compat.npm` (installed
once into a cache, the pinned version the compatibility tests run); the
script is copied next to a `node_modules` link to it. Node 20 gets its
WebSocket through `NODE_OPTIONS` (see `tests.compat.npm.node_env`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.compat import npm

SCRIPT = Path(__file__).with_name("official_app.mjs")
#: The official TypeScript SDK version the benchmark runs.
VERSION = npm.TS_SDK_VERSION


def command(workdir: Path, env: dict[str, str], *, checkpointing: bool) -> tuple[list[str], dict[str, str]]:
    """Arguments and environment to start the worker with; `checkpointing=False`
    sets the SDK's documented `checkpointing: false` client option."""
    script = npm.prepare_script(SCRIPT, workdir)
    node = shutil.which("node")
    if node is None:
        raise npm.NodeMissing("node is not on PATH")
    full = npm.node_env(env)
    full["BENCH_TS_CHECKPOINTING"] = "true" if checkpointing else "false"
    return [node, str(script)], full
