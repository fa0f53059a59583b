"""What the platform's metrics and its run-end log line cost (issue 25).

Every run's end is logged (one line, text or JSON) and the executor counts
runs and times steps (`connect.metrics`). Neither was measured by the other
scenarios, which run with both on. Two measurements here:

- **In process, each call alone**: the run-end log call as the executor
  makes it (`connect.logs.setup`, the same logger, format and fields,
  written to a file) in text, in JSON and below the log level (off); the
  metric calls of one step (`RunMetrics.step_done`) and of one run
  (`run_started` + `run_finished`), each timed over many calls: microseconds
  per call, with no other load.
- **End to end, alternated**: the `durable` workload (`connect dev` on
  SQLite and our worker, 5-step runs, `IN_FLIGHT` runs in flight) in
  `VARIANTS`, each in a fresh `connect dev` (`bench.observed_dev`), in
  `ROUNDS` rounds (`--rounds`) whose order rotates, so each variant sees the machine's
  moments alike: steps/s and `connect dev`'s CPU per step. `bare` (no
  metrics, the log below its level) is the baseline; the others add the
  metrics, the log line in text, in JSON, or both as users run it
  (`default`). Figures are medians over the rounds, and each variant's
  ratio to `bare` is the median of the per-round ratios.

A cost a user would notice shows as steps/s below `bare` by more than the
rounds' spread; the in-process figures say how much of the CPU per step
each piece can account for. `python -m bench.observability [--quick]`.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import httpx

from bench import procs, scenario
from bench.durable import STEPS, measure

#: name -> (metrics counted, --log-level, --log-format)
VARIANTS: Final = {
    "bare": (False, "warning", "text"),
    "metrics": (True, "warning", "text"),
    "log_text": (False, "info", "text"),
    "log_json": (False, "info", "json"),
    "default": (True, "info", "text"),
}
ROUNDS: Final = 3
#: Calls timed per in-process figure.
CALLS: Final = 200_000


def _per_call_us(call: Callable[[], object], calls: int) -> float:
    """Microseconds per `call()`, the best of three timings of `calls` calls."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, time.perf_counter() - started)
    return best / calls * 1e6


def in_process(calls: int) -> dict[str, float]:
    """The log call and the metric calls, each alone (see the module doc)."""
    from prometheus_client import CollectorRegistry

    from connect import logs
    from connect.metrics import RunMetrics

    out: dict[str, float] = {}
    log = logging.getLogger("connect.executor.run_state")
    run_id, function_id, status = "01KBENCHRUN0000000000000000", "bench-app-five-steps", "Completed"
    extra = {"run_id": run_id, "function": function_id, "status": status}

    def end_line() -> None:
        log.info("run %s (%s) ended: %s", run_id, function_id, status, extra=extra)

    saved = sys.stderr
    try:
        with tempfile.TemporaryDirectory() as folder:
            for name, level, fmt in (("off", "warning", "text"), ("text", "info", "text"), ("json", "info", "json")):
                with open(Path(folder) / f"{name}.log", "w", buffering=1) as sink:
                    sys.stderr = sink  # logs.setup writes to the stderr of the moment
                    logs.setup(level, fmt)
                    out[f"run_end_log_{name}_us"] = _per_call_us(end_line, calls // 4)
    finally:
        sys.stderr = saved
        logs.setup("warning")

    metrics = RunMetrics(CollectorRegistry())
    out["metrics_per_step_us"] = _per_call_us(lambda: metrics.step_done(function_id, 0.004), calls)

    def one_run() -> None:
        metrics.run_started(function_id)
        metrics.run_finished(function_id, status)

    out["metrics_per_run_us"] = _per_call_us(one_run, calls)
    return out


def _platform(
    children: procs.Children, opts: scenario.Options, tag: str, variant: str
) -> Callable[[], tuple[dict[str, procs.Child], str]]:
    counted, level, fmt = VARIANTS[variant]

    def start() -> tuple[dict[str, procs.Child], str]:
        port, gw_port = procs.free_port(), procs.free_port()
        args = procs.python("-m", "bench.observed_dev", *([] if counted else ["--no-metrics"]))
        args += ["--port", str(port), "--gateway-port", str(gw_port), "--db", str(opts.workdir / f"{tag}.db")]
        env = {"CONNECT_LOG_LEVEL": level, "CONNECT_LOG_FORMAT": fmt}
        dev = children.start(f"{tag}-dev", args, env=env)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if not dev.alive():
                raise RuntimeError(f"connect dev exited:\n{dev.tail()}")
            try:
                return httpx.get(f"{url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        procs.wait_until(up, 60, "connect dev")
        return {"dev": dev}, url

    return start


def run(opts: scenario.Options, children: procs.Children) -> dict[str, Any]:
    out: dict[str, Any] = dict(in_process(opts.count(CALLS, CALLS // 4)))
    rounds = opts.extra.rounds or opts.count(ROUNDS, 2)
    seconds = opts.pick(8.0, 5.0)
    names = list(VARIANTS)
    seen: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            tag = f"{name}-{r}"
            figures = measure(
                opts,
                children,
                worker_kind="ours",
                sequential=0,
                seconds=seconds,
                profile_seconds=0,
                tag=tag,
                platform=_platform(children, opts, tag, name),
            )
            seen[name].append(figures)
            print(
                f"  round {r + 1} {name:9s} {figures['steps_per_s']:8.0f} steps/s"
                f"  {figures['dev_cpu_us_per_step']:6.1f} us CPU/step (connect dev)",
                flush=True,
            )
    for name in names:
        sps = [f["steps_per_s"] for f in seen[name]]
        cpu = [f["dev_cpu_us_per_step"] for f in seen[name]]
        out[f"{name}_steps_per_s"] = statistics.median(sps)
        out[f"{name}_steps_per_s_spread"] = max(sps) - min(sps)
        out[f"{name}_dev_cpu_us_per_step"] = statistics.median(cpu)
        if name != "bare":
            ratios = [f["steps_per_s"] / b["steps_per_s"] for f, b in zip(seen[name], seen["bare"], strict=True)]
            extra = [
                f["dev_cpu_us_per_step"] - b["dev_cpu_us_per_step"]
                for f, b in zip(seen[name], seen["bare"], strict=True)
            ]
            out[f"{name}_over_bare"] = statistics.median(ratios)
            out[f"{name}_extra_cpu_us_per_step"] = statistics.median(extra)
    out["rounds"] = rounds
    out["steps_per_run"] = STEPS
    return out


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rounds", type=int, default=0, help=f"rounds of every variant (default {ROUNDS}, 2 with --quick)"
    )


if __name__ == "__main__":
    sys.exit(scenario.main("observability", run, add_args=_args))
