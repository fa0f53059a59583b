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
  SQLite and our worker, 5-step runs, `IN_FLIGHT` runs in flight) in each
  of `VARIANTS`: one `connect dev` (`bench.observed_dev`) and one worker per
  variant, all started first and kept up, then short windows (a few seconds,
  after a warm-up) taking turns, one variant loaded at a time, in `ROUNDS`
  rounds (`--rounds`) whose order rotates, so the variants see the
  machine's moments alike: steps/s and `connect dev`'s CPU per step. `bare`
  (no metrics, the log below its level) is the baseline; the others add the
  metrics, the log line in text, in JSON, or both as users run it
  (`default`). Figures are medians over the rounds; each variant's ratio to
  `bare` is the median of the per-round ratios.

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

from bench import procs, scenario
from bench.dispatch import start_worker
from bench.durable import EVENT, IN_FLIGHT, STEPS, _EventPoster, start_dev
from bench.load import closed_loop
from bench.notify import ENV as NOTIFY_ENV
from bench.notify import Listener

#: name -> (metrics counted, --log-level, --log-format)
VARIANTS: Final = {
    "bare": (False, "warning", "text"),
    "metrics": (True, "warning", "text"),
    "log_text": (False, "info", "text"),
    "log_json": (False, "info", "json"),
    "default": (True, "info", "text"),
}
ROUNDS: Final = 6
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


class _Variant:
    """One variant's `connect dev` (`bench.observed_dev`) and worker, kept up for the whole run."""

    def __init__(self, children: procs.Children, opts: scenario.Options, name: str) -> None:
        counted, level, fmt = VARIANTS[name]
        self.name = name
        self.dev, self.url = start_dev(
            children,
            opts,
            name,
            env={"CONNECT_LOG_LEVEL": level, "CONNECT_LOG_FORMAT": fmt},
            command=("-m", "bench.observed_dev", *([] if counted else ["--no-metrics"])),
        )
        self.listener = Listener()
        self.worker = start_worker(
            children, "ours", self.url, f"{name}-worker", env={NOTIFY_ENV: self.listener.address}
        )
        self.poster = _EventPoster(self.url)
        self.windows: list[tuple[float, float]] = []  # (steps/s, connect dev's CPU us per step)

    def submit(self, keys: list[str]) -> None:
        self.poster.post([{"name": EVENT, "data": {"k": k}} for k in keys])

    def wait_serving(self) -> None:
        """Until a run completes (the first events may come before the worker registered)."""
        deadline = time.monotonic() + 90
        probe = 0
        while not any(k.startswith("probe") for k, _ in self.listener.poll(1.0)):
            if not self.worker.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"no run completed ({self.name}):\n{self.dev.tail()}\n{self.worker.tail()}")
            self.submit([f"probe{probe}"])
            probe += 1
        time.sleep(0.5)
        self.listener.poll(0.05)

    def window(self, warmup: float, seconds: float) -> None:
        cpu0 = self.dev.cpu_seconds()
        loop = closed_loop(
            self.submit, self.listener, in_flight=IN_FLIGHT, warmup=warmup, seconds=seconds, prefix=f"{self.name}-"
        )
        steps = max(1, len(loop.done) * STEPS)
        self.windows.append((loop.jobs_per_s * STEPS, (self.dev.cpu_seconds() - cpu0) / steps * 1e6))

    def close(self) -> None:
        self.poster.close()
        self.listener.close()
        self.worker.stop()
        self.dev.stop()


def run(opts: scenario.Options, children: procs.Children) -> dict[str, Any]:
    out: dict[str, Any] = dict(in_process(opts.count(CALLS, CALLS // 4)))
    rounds = opts.extra.rounds or opts.count(ROUNDS, 3)
    warmup, seconds = opts.pick(1.5, 1.0), opts.pick(4.0, 3.0)
    names = list(VARIANTS)
    variants: list[_Variant] = []
    try:
        for name in names:
            variants.append(_Variant(children, opts, name))
        for variant in variants:
            variant.wait_serving()
        for r in range(rounds):
            for variant in variants[r % len(variants) :] + variants[: r % len(variants)]:
                variant.window(warmup, seconds)
                sps, cpu = variant.windows[-1]
                print(f"  round {r + 1} {variant.name:9s} {sps:8.0f} steps/s {cpu:7.1f} us CPU/step", flush=True)
    finally:
        for variant in variants:
            variant.close()
    bare = variants[0].windows
    for variant in variants:
        sps = [w[0] for w in variant.windows]
        cpu = [w[1] for w in variant.windows]
        out[f"{variant.name}_steps_per_s"] = statistics.median(sps)
        out[f"{variant.name}_steps_per_s_spread"] = max(sps) - min(sps)
        out[f"{variant.name}_dev_cpu_us_per_step"] = statistics.median(cpu)
        if variant.name != "bare":
            out[f"{variant.name}_over_bare"] = statistics.median(
                w[0] / b[0] for w, b in zip(variant.windows, bare, strict=True)
            )
            out[f"{variant.name}_extra_cpu_us_per_step"] = statistics.median(
                w[1] - b[1] for w, b in zip(variant.windows, bare, strict=True)
            )
    out["rounds"] = rounds
    out["window_s"] = seconds
    out["in_flight"] = IN_FLIGHT
    out["steps_per_run"] = STEPS
    return out


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rounds", type=int, default=0, help=f"rounds of every variant (default {ROUNDS}, 2 with --quick)"
    )


if __name__ == "__main__":
    sys.exit(scenario.main("observability", run, add_args=_args))
