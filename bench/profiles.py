"""Sampling profiles of running processes with py-spy, reduced to top frames.

`record()` attaches py-spy to a pid for a fixed window (non-blocking, so the
target is not paused) and writes collapsed stacks. `summarize()` turns them
into the figures the README quotes: how busy each thread was, the frames
where samples ended (self time) and the frames on the stack (inclusive
time), per thread, with line numbers folded so one function is one row.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

RATE = 200  # samples per second per thread

_LINE = re.compile(r":\d+\)$")
_SITE = re.compile(r"(/[^ ()]*?/(site-packages|lib/python3\.\d+)/)")


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).exists() else None


def start(pid: int, seconds: float, out: Path, *, threads: bool = True) -> subprocess.Popen[bytes] | None:
    """Start recording `pid` for `seconds`; None when py-spy is unavailable."""
    exe = py_spy()
    if exe is None:
        return None
    args = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(RATE),
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(out),
    ]
    if threads:
        args.append("--threads")
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish(proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    if proc is None:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _clean(frame: str) -> str:
    frame = _LINE.sub(")", frame)
    frame = _SITE.sub("", frame)
    return frame.replace(str(Path(__file__).resolve().parents[1]) + "/", "")


def summarize(path: Path, seconds: float, top: int = 12) -> dict[str, Any]:
    """Per thread: busy share of the window, top self and inclusive frames (% of that thread's samples)."""
    if not path.exists():
        return {"error": "no profile recorded"}
    per_thread: dict[str, Counter[str]] = {}
    incl: dict[str, Counter[str]] = {}
    totals: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        thread = "main"
        if frames and frames[0].startswith(("thread ", "process ")):
            while frames and frames[0].startswith(("thread ", "process ")):
                thread = frames.pop(0)
        thread = _thread_label(thread)
        if not frames:
            continue
        totals[thread] += count
        per_thread.setdefault(thread, Counter())[_clean(frames[-1])] += count
        seen = {_clean(f) for f in frames}
        bucket = incl.setdefault(thread, Counter())
        for f in seen:
            bucket[f] += count
    possible = max(1.0, seconds * RATE)
    threads: list[dict[str, Any]] = []
    for thread, total in totals.most_common():
        threads.append(
            {
                "thread": thread,
                "samples": total,
                "busy_pct": round(100.0 * total / possible, 1),
                "self": [(round(100.0 * n / total, 1), f) for f, n in per_thread[thread].most_common(top)],
                "inclusive": [(round(100.0 * n / total, 1), f) for f, n in incl[thread].most_common(top + 14)],
            }
        )
    return {"seconds": seconds, "rate": RATE, "threads": threads}


def _thread_label(raw: str) -> str:
    # py-spy writes `thread (<tid>): <name>`; the name is what identifies a role.
    m = re.search(r"\): (.+)$", raw)
    name = m.group(1).strip('"') if m else raw
    return re.sub(r":/\S+$", "", name) or name


#: Entry frames every sample passes through (process and thread start, the
#: event loop's outer call): left out of the inclusive lists.
_ENTRY = re.compile(
    r"\((<frozen runpy>|threading\.py|uvloop/__init__\.py|connect/cli\.py|connect/__main__\.py)\)$"
    r"|^(<module>|main|_gateway_role|_thread_main|_run_loop) \(|^Runner\.run \(asyncio/runners\.py\)$"
)


def render(name: str, summary: dict[str, Any], *, max_threads: int = 3, rows: int = 10) -> str:
    """Plain-text top frames, as pasted into bench/README.md."""
    if "threads" not in summary:
        return f"{name}: {summary.get('error', 'no profile')}\n"
    out = [f"### {name} (py-spy, {summary['seconds']:.0f}s at {summary['rate']} Hz)"]
    for t in summary["threads"][:max_threads]:
        out.append(f"thread {t['thread']}: busy {t['busy_pct']}% of the window")
        out.append("  self%  frame")
        for pct, frame in t["self"][:rows]:
            out.append(f"  {pct:5.1f}  {frame}")
        out.append("  incl%  frame")
        inclusive = [(pct, frame) for pct, frame in t["inclusive"] if not _ENTRY.search(frame)]
        for pct, frame in inclusive[:rows]:
            out.append(f"  {pct:5.1f}  {frame}")
    return "\n".join(out) + "\n"
