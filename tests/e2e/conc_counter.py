"""Counting step bodies in progress on the worker side, across processes.

The concurrency test apps (ours, the official Python SDK's) call `enter(name)`
when a body begins and `leave(name)` when it ends. Counts live in files under
CONC_DIR, changed under one `flock`, so bodies in any number of worker
processes are counted together. Every `enter` appends `<name> <count> <tag>
<time>` to `starts.log`: the tests read the peaks and the order from it.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path


def _dir() -> Path | None:
    directory = os.environ.get("CONC_DIR")
    return Path(directory) if directory else None


def _change(name: str, delta: int, tag: str) -> None:
    directory = _dir()
    if directory is None:
        return
    with open(directory / "lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = directory / f"count-{name}"
        count = int(path.read_text() or 0) if path.exists() else 0
        count += delta
        path.write_text(str(count))
        if delta > 0:
            with open(directory / "starts.log", "a") as f:
                f.write(f"{name} {count} {tag} {time.time():.3f}\n")


def enter(name: str, tag: str = "-") -> None:
    _change(name, +1, tag)


def leave(name: str) -> None:
    _change(name, -1, "-")


def starts(directory: Path) -> list[tuple[str, int, str, float]]:
    """Every body begun: (name, bodies of that name in progress, tag, time)."""
    path = directory / "starts.log"
    if not path.exists():
        return []
    text = path.read_text()
    rows = [line.split() for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]
    return [(r[0], int(r[1]), r[2], float(r[3])) for r in rows]


def peaks(directory: Path) -> dict[str, int]:
    """The most bodies of each name ever in progress at once."""
    found: dict[str, int] = {}
    for name, count, _, _ in starts(directory):
        found[name] = max(found.get(name, 0), count)
    return found
