"""`python -m bench`: every scenario in one run, then the side-by-side table.

Each scenario runs as its own process (`python -m bench.<name> --json ...`)
in its own session, with a time limit; past it the scenario is sent SIGTERM
(it stops its children), then its whole group is killed, and any process
still carrying this run's token is reaped. The CPU that processes outside
the benchmark used meanwhile (other builds and tests on a shared machine) is
reported next to each scenario, since it skews absolute numbers; the ratios
compare figures measured minutes apart in the same run.

Options: `--quick` (smaller counts, shorter windows, 2,000 idle connections),
`--no-profile`, `--only echo,dispatch,...`, `--json PATH` (all figures),
`--markdown PATH` (the table and top profile frames, as pasted into
bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench import machine, procs, report

#: (module, time limit in seconds for a full run)
SCENARIOS: list[tuple[str, float]] = [
    ("echo", 120),
    ("floor", 120),
    ("celery_baseline", 300),
    ("dispatch", 420),
    ("durable", 420),
    ("durable_pg", 420),
    ("split_roles", 420),
    ("flow_control", 420),
    ("workers", 600),
    ("idle", 720),
]


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0))


def _run_scenario(name: str, limit: float, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    out = run_dir / f"{name}.json"
    cmd = [sys.executable, "-m", f"bench.{name}", "--json", str(out)]
    if args.quick:
        cmd.append("--quick")
    if args.no_profile:
        cmd.append("--no-profile")
    log = open(run_dir / f"{name}.log", "wb")
    busy0, t0 = _busy_seconds(), time.monotonic()
    proc = subprocess.Popen(cmd, cwd=procs.ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = t0 + limit
    rusage = None
    timed_out = False
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline and not timed_out:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
        elif timed_out and time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    reaped = procs.reap_marked(procs.run_token())
    log.close()
    wall = time.monotonic() - t0
    ours = (rusage.ru_utime + rusage.ru_stime) if rusage is not None else 0.0
    foreign = max(0.0, _busy_seconds() - busy0 - ours)
    try:
        result: dict[str, Any] = json.loads(out.read_text())
    except (OSError, ValueError):
        result = {"error": f"no result (exit {proc.returncode})"}
    if timed_out:
        result["error"] = f"timed out after {limit:.0f}s"
    if reaped:
        result["reaped_processes"] = len(reaped)
    result["wall_s"] = round(wall, 1)
    result["other_load_cores"] = round(foreign / wall, 2) if wall > 0 else 0.0
    return result


def _profile_sections(results: dict[str, dict[str, Any]]) -> str:
    parts = []
    for name, res in results.items():
        for key, value in res.items():
            if key.startswith("profile_") and not key.endswith("_data") and isinstance(value, str):
                parts.append(f"[{name}] {value}")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    procs.run_token()
    only = {s for s in args.only.split(",") if s}
    chosen = [(n, lim) for n, lim in SCENARIOS if not only or n in only]
    unknown = only - {n for n, _ in SCENARIOS}
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    run_dir = Path(tempfile.mkdtemp(prefix="bench-run-"))
    info = machine.describe()
    print(machine.render(info), flush=True)
    print(f"logs and raw figures: {run_dir}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    started = time.monotonic()

    def interrupted(signum: int, _frame: object) -> None:
        procs.reap_marked(procs.run_token())
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    for name, limit in chosen:
        limit = limit / 2 if args.quick else limit
        print(f"-- {name} ...", end=" ", flush=True)
        res = _run_scenario(name, limit, args, run_dir)
        results[name] = res
        # A scenario that measures several cases (`workers`) reports a failed
        # case as `<case>_error` and still gives the others' figures.
        failed_cases = sorted(k.removesuffix("_error") for k in res if k.endswith("_error"))
        status = f"error: {res['error']}" if "error" in res else "ok"
        if failed_cases:
            status += f"; failed: {', '.join(failed_cases)} (see the table)"
        print(f"{status} ({res['wall_s']:.0f}s, other load {res['other_load_cores']:.2f} cores)", flush=True)
    total = time.monotonic() - started
    info["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(report.render_text(results))
    print(
        f"\ntotal {total:.0f}s; other load per scenario (cores): "
        + ", ".join(f"{n} {r['other_load_cores']:.2f}" for n, r in results.items())
    )
    profiles_text = _profile_sections(results)
    if profiles_text:
        print("\n" + profiles_text)
    payload = {"machine": info, "results": results, "total_s": round(total, 1), "quick": args.quick}
    (run_dir / "results.json").write_text(json.dumps(payload, indent=2, default=str))
    if args.json is not None:
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    if args.markdown is not None:
        args.markdown.write_text(
            machine.render(info) + "\n\n" + report.render_markdown(results) + "\n\n```\n" + profiles_text + "```\n"
        )
    failed = [n for n, r in results.items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
