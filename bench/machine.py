"""What the numbers were measured on: CPU, memory, kernel, Python and library versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from typing import Any

import psutil

PACKAGES = (
    "websockets",
    "uvloop",
    "msgspec",
    "protobuf",
    "uvicorn",
    "starlette",
    "celery",
    "kombu",
    "redis",
    "inngest",
    "dbos",
    "asyncpg",
    "py-spy",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpuidle_driver() -> str:
    """The kernel's idle driver: how a vCPU waits when it has nothing to run.

    It sets what every wake-up costs, so it moves the latency figures between
    machines that are otherwise alike: `haltpoll` polls a little before it
    halts, while `none` (or `acpi_idle`) halts at once and each wake-up is a
    round trip through the hypervisor."""
    try:
        with open("/sys/devices/system/cpu/cpuidle/current_driver") as f:
            return f.read().strip() or "none"
    except OSError:
        return "unknown"


def _redis_server() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        return "not found"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip()[:40]


def _postgres() -> str:
    from bench.postgres import find_bin_dir

    try:
        postgres = find_bin_dir() / "postgres"
    except RuntimeError:
        return "not found"
    out = subprocess.run([str(postgres), "--version"], capture_output=True, text=True, check=False).stdout
    words = out.split()  # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    return words[2] if len(words) > 2 else out.strip()[:40] or "unknown"


def describe() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "-"
    versions["redis-server"] = _redis_server()
    versions["postgres"] = _postgres()
    soft, hard = __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "cpuidle": _cpuidle_driver(),
        "python": platform.python_version(),
        "nofile_limit": f"{soft}/{hard}",
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


def render(info: dict[str, Any]) -> str:
    v = info["versions"]
    libs = ", ".join(f"{k} {v[k]}" for k in v)
    return (
        f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, Linux {info['kernel']}, "
        f"idle driver {info['cpuidle']}, "
        f"Python {info['python']}, open files {info['nofile_limit']}, load average before {info['load_before']}\n"
        f"versions: {libs}"
    )
