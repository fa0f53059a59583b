"""The official TypeScript SDK, installed from the npm registry into a cache.

Tests and `make bench` run unmodified official TypeScript workers with the
machine's Node (20 or newer). The SDK is installed once per version into
`$CONNECT_NPM_CACHE` (default `~/.cache/connect-platform/npm`), so only the
first run needs the registry. A worker script is copied into a directory of
the caller's whose `node_modules` points at the cache, so plain
`import ... from "inngest"` resolves there.

Node 20 has WebSocket only behind `--experimental-websocket`, and the SDK's
connect layer opens its socket in a worker thread that the flag given on the
command line does not reach: it must come through `NODE_OPTIONS`
(`node_env`). Node 22 has WebSocket built in.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

#: The official TypeScript SDK version the tests and benchmarks run.
TS_SDK_VERSION = "4.24.0"
#: The oldest Node the official TypeScript SDK's connect layer runs on here.
MIN_NODE_MAJOR = 20


class NodeMissing(RuntimeError):
    """No usable Node on PATH, or the SDK could not be installed."""


def cache_root() -> Path:
    return Path(os.environ.get("CONNECT_NPM_CACHE") or Path.home() / ".cache" / "connect-platform" / "npm")


def node_major() -> int:
    """The major version of `node` on PATH; NodeMissing if there is none."""
    node = shutil.which("node")
    if node is None:
        raise NodeMissing(f"node is not on PATH: the official TypeScript SDK needs Node >= {MIN_NODE_MAJOR}")
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major = int(out.lstrip("v").split(".")[0])
    if major < MIN_NODE_MAJOR:
        raise NodeMissing(f"node {out} is too old: the official TypeScript SDK needs Node >= {MIN_NODE_MAJOR}")
    return major


def node_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) plus what Node needs to
    give the SDK's worker thread a WebSocket."""
    env = dict(os.environ if base is None else base)
    if node_major() < 22:
        options = env.get("NODE_OPTIONS", "")
        if "--experimental-websocket" not in options.split():
            env["NODE_OPTIONS"] = f"{options} --experimental-websocket".strip()
    return env


def ensure_sdk(version: str = TS_SDK_VERSION) -> Path:
    """The `node_modules` directory holding `inngest@version`, installed from
    the npm registry on first use (concurrent callers wait for one install)."""
    node_major()
    root = cache_root()
    target = root / f"inngest-{version}"
    modules = target / "node_modules"
    if (modules / "inngest" / "package.json").is_file():
        return modules
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (modules / "inngest" / "package.json").is_file():
            return modules
        npm = shutil.which("npm")
        if npm is None:
            raise NodeMissing("npm is not on PATH: it installs the official TypeScript SDK")
        staging = Path(tempfile.mkdtemp(prefix=f"inngest-{version}-", dir=root))
        manifest = {"name": "connect-ts-workers", "private": True, "dependencies": {"inngest": version}}
        (staging / "package.json").write_text(json.dumps(manifest))
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=staging,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise NodeMissing(f"npm install inngest@{version} failed:\n{done.stdout}\n{done.stderr}")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return modules


def prepare_script(script: Path, workdir: Path, version: str = TS_SDK_VERSION) -> Path:
    """Copy `script` into `workdir` next to a `node_modules` link to the
    cached SDK; the path to run with `node`."""
    modules = ensure_sdk(version)
    workdir.mkdir(parents=True, exist_ok=True)
    link = workdir / "node_modules"
    if not link.exists():
        link.symlink_to(modules, target_is_directory=True)
    copy = workdir / script.name
    shutil.copyfile(script, copy)
    return copy
