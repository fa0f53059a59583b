"""What every scenario module shares: its command line, work directory and cleanup.

A scenario is a function `run(opts, children) -> dict` of flat, JSON-able
figures. `main()` gives it `--quick`, `--no-profile`, `--json PATH` and
`--keep`; starts it in a fresh work directory (kept when something fails);
stops every child on return, on an exception and on SIGTERM/SIGINT; and
prints the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procs


@dataclass
class Options:
    quick: bool
    profile: bool
    workdir: Path
    extra: argparse.Namespace

    def pick(self, full: float, quick: float) -> float:
        return quick if self.quick else full

    def count(self, full: int, quick: int) -> int:
        return quick if self.quick else full


Scenario = Callable[[Options, procs.Children], dict[str, Any]]


def main(
    name: str,
    run: Scenario,
    argv: list[str] | None = None,
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}")
    parser.add_argument("--quick", action="store_true", help="fewer samples and shorter windows")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile windows")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases, profiles)")
    if add_args is not None:
        add_args(parser)
    args = parser.parse_args(argv)
    procs.run_token()
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    opts = Options(quick=args.quick, profile=not args.no_profile, workdir=workdir, extra=args)
    children = procs.Children(workdir)
    procs.install_stop_handlers(children.close)
    started = time.monotonic()
    ok = False
    result: dict[str, Any] = {}
    try:
        result = run(opts, children)
        ok = True
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}", "workdir": str(workdir)}
    finally:
        children.close()
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    print_figures(name, result)
    if ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"work directory kept: {workdir}", file=sys.stderr)
    return 0 if ok else 1


def print_figures(name: str, result: dict[str, Any]) -> None:
    print(f"== {name}")
    for key, value in result.items():
        if key.startswith("profile"):
            continue
        if isinstance(value, float):
            print(f"  {key:42s} {value:12.3f}")
        elif isinstance(value, dict | list):
            print(f"  {key:42s} {json.dumps(value, default=str)[:160]}")
        else:
            print(f"  {key:42s} {value}")
    for key, value in result.items():
        if key.startswith("profile") and isinstance(value, str):
            print(value)
    sys.stdout.flush()
