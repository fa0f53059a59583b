"""Flow control: what a concurrency limit costs, and how fast a freed key is handed over.

One platform (`connect dev`, as `bench.durable` runs it) and one of our
workers serving three functions (`bench.apps`):

- **A, cost per step.** 300 runs of a 5-step no-op function kept in flight
  (the closed loop of `bench.load`), once as `five-steps` (no flow control)
  and once as `five-steps-keyed` (`concurrency=[{limit: 1, key:
  event.data.key}]`, each run's event carrying the next of 1,000 keys in
  turn, so 300 runs in flight hold 300 distinct keys and a run waits only
  if it is 1,000 runs behind one still going). The two alternate, window
  for window (`ROUNDS` rounds, the order swapped each round), so both see
  the same moments of a shared machine. Figures: steps/s of each and
  keyed / plain (the target is >= 0.80; printed, never asserted), both
  counted in the windows and by Little's law (`bench.load`: runs kept in
  flight over their mean latency; limited runs tend to move in waves, and
  a count in a window is then a whole number of waves), with the
  CPU per step of `connect dev` and of the worker, and on PostgreSQL the
  statements and commits per step of the platform's database.
- **B, handover.** A batch of runs of `handover` (one step, `limit: 1` on
  one key for the whole batch) posted at once: all but the first wait in
  line. The step body reports its start and end on the worker's clock
  (a UDP datagram); each run's `ended_at` is the platform's commit of its
  reply, after which its slot is released. For consecutive runs a, b in
  the order their steps started, "commit -> next start" is b's start on
  the worker minus a's stored `ended_at` (truncated to the millisecond; the
  fraction is drawn back as `bench.durable` does), and "worker end -> next
  start" is b's start minus a's step end, both on the worker's clock (the
  stand-in that needs no stored time, and includes the reply's trip to
  the platform). Only pairs where b was already waiting count (b's run
  started before a's ended). One batch follows each round of A.

Cases: SQLite with the default checkpoints (one request runs a run's five
steps, so a run takes its key's slot once); SQLite with
`--no-checkpoint-steps` (one step per request, as the official protocol
runs, so each of a run's six requests takes and gives back the slot; A
only, since a run's next request then takes the slot again behind its
step and a run's end is not a handover); and
PostgreSQL with the default checkpoints (a throwaway cluster,
`bench.postgres`), skipped with a reason when PostgreSQL is not installed.

`python -m bench.flow_control [--quick] [--cases sqlite,pg]` runs it alone.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from bench import apps, procs, scenario
from bench.dispatch import default_poll_env, start_worker
from bench.durable import STATS_SETTLE, STEPS, _EventPoster, _restored, start_dev
from bench.load import closed_loop
from bench.notify import ENV as NOTIFY_ENV
from bench.notify import Listener
from bench.postgres import Cluster, Database
from bench.stats import summary_ms

IN_FLIGHT = 300
#: Distinct concurrency keys, taken in turn (one per run).
KEYS = 1000
#: The key every run of a handover batch shares.
HOT_KEY = "hot"


@dataclass
class _Side:
    """One function's loaded windows, summed over the rounds."""

    completed: int = 0
    span: float = 0.0
    #: Little's law (`LoopResult.inflight_jobs_per_s`) times each window's span, summed.
    inflight_runs: float = 0.0
    runs: int = 0
    dev_cpu: float = 0.0
    worker_cpu: float = 0.0
    statements: int = 0
    commits: int = 0
    unfinished: int = 0
    per_window: list[float] = field(default_factory=list)
    #: Submission to completion datagram of the runs started inside the windows (seconds).
    latencies: list[float] = field(default_factory=list)

    def figures(self, prefix: str, database: Database | None) -> dict[str, Any]:
        steps = max(1, self.runs * STEPS)
        out: dict[str, Any] = {
            f"{prefix}_steps_per_s": self.completed * STEPS / self.span if self.span else 0.0,
            f"{prefix}_inflight_steps_per_s": self.inflight_runs * STEPS / self.span if self.span else 0.0,
            f"{prefix}_window_steps_per_s": [round(x) for x in self.per_window],
            f"{prefix}_dev_cpu_us_per_step": self.dev_cpu / steps * 1e6,
            f"{prefix}_worker_cpu_us_per_step": self.worker_cpu / steps * 1e6,
            f"{prefix}_runs_unfinished": self.unfinished,
        }
        lat = summary_ms(self.latencies)
        out[f"{prefix}_run_p50_ms"], out[f"{prefix}_run_p99_ms"] = lat["p50_ms"], lat["p99_ms"]
        out[f"{prefix}_run_max_ms"] = lat["max_ms"]
        if database is not None:
            out[f"{prefix}_statements_per_step"] = self.statements / steps
            out[f"{prefix}_commits_per_step"] = self.commits / steps
        return out


@dataclass
class _Handover:
    key: str
    start: float
    end: float
    started_at: float = 0.0
    ended_at: float = 0.0


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class _Bench:
    """A platform, a worker and the driver's ends of both."""

    def __init__(self, url: str, listener: Listener, worker: procs.Child, dev: procs.Child) -> None:
        self.url = url
        self.listener = listener
        self.worker = worker
        self.dev = dev
        self.http = httpx.Client(base_url=url, timeout=30)
        self.poster = _EventPoster(url)
        self.ids: dict[str, str] = {}
        self._keys = itertools.count()
        #: Handover datagrams that arrived while waiting for something else.
        self.handovers: dict[str, _Handover] = {}

    def post(self, name: str, keys: list[str], data: dict[str, str] | None = None) -> None:
        events = []
        for k in keys:
            payload = {"k": k, **(data or {})}
            if name == apps.FIVE_KEYED_EVENT:
                payload["key"] = f"key{next(self._keys) % KEYS}"
            events.append({"name": name, "data": payload})
        for k, eid in zip(keys, self.poster.post(events), strict=True):
            self.ids[k] = eid

    def poll(self, timeout: float) -> list[str]:
        """Completion keys; handover reports are kept aside."""
        keys = []
        for text, _ in self.listener.poll(timeout):
            if text.startswith("h "):
                _, k, start, end = text.split()
                self.handovers[k] = _Handover(k, float(start), float(end))
            else:
                keys.append(text)
        return keys

    def ready(self) -> None:
        """Probe each function until one of its runs completes (the worker registered them)."""
        deadline = time.monotonic() + 90
        for name in (apps.FIVE_EVENT, apps.FIVE_KEYED_EVENT, apps.HANDOVER_EVENT):
            for probe in itertools.count():
                if not self.worker.alive():
                    raise RuntimeError(f"worker exited:\n{self.worker.tail()}")
                if time.monotonic() > deadline:
                    tails = f"dev:\n{self.dev.tail()}\nworker:\n{self.worker.tail()}"
                    raise RuntimeError(f"no {name} run completed\n{tails}")
                key = f"probe-{name}-{probe}"
                self.post(name, [key], {"key": f"probe{probe}"} if name == apps.HANDOVER_EVENT else None)
                if self._arrived(key, 1.0):
                    break
        time.sleep(0.5)
        self.poll(0.05)
        self.handovers.clear()

    def _arrived(self, key: str, timeout: float) -> bool:
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if key in self.poll(0.1) or key in self.handovers:
                return True
        return False

    def close(self) -> None:
        self.http.close()
        self.poster.close()


def _window(bench: _Bench, side: _Side, event: str, opts: scenario.Options, database: Database | None) -> None:
    class _Feed:
        """The listener as `closed_loop` reads it, without the handover reports."""

        @staticmethod
        def poll(timeout: float) -> list[tuple[str, float]]:
            out = []
            for text, t in bench.listener.poll(timeout):
                if not text.startswith("h "):
                    out.append((text, t))
            return out

    counters0 = database.counters() if database is not None else None
    c0 = (bench.dev.cpu_seconds(), bench.worker.cpu_seconds())
    loop = closed_loop(
        lambda keys: bench.post(event, keys),
        _Feed(),  # type: ignore[arg-type]
        in_flight=IN_FLIGHT,
        warmup=opts.pick(2.0, 1.5),
        seconds=opts.pick(6.0, 3.0),
        prefix=f"{event}-",
    )
    c1 = (bench.dev.cpu_seconds(), bench.worker.cpu_seconds())
    span = loop.window_end - loop.window_start
    side.completed += loop.completed_in_window
    side.span += span
    side.inflight_runs += loop.inflight_jobs_per_s * span
    side.per_window.append(loop.completed_in_window * STEPS / span)
    side.runs += len(loop.done)
    side.dev_cpu += c1[0] - c0[0]
    side.worker_cpu += c1[1] - c0[1]
    side.unfinished += loop.unfinished
    side.latencies += [loop.done[k] - loop.sent[k] for k in loop.window_keys()]
    if database is not None and counters0 is not None:
        time.sleep(STATS_SETTLE)
        counted = database.counters() - counters0
        side.statements += counted.statements
        side.commits += counted.commits


def _handover_batch(bench: _Bench, n: int, tag: str) -> tuple[list[float], list[float], int]:
    """Post `n` runs on one key at once; the waits of the pairs that handed over (seconds)."""
    keys = [f"{tag}-{i}" for i in range(n)]
    for i in range(0, n, 100):
        bench.post(apps.HANDOVER_EVENT, keys[i : i + 100], {"key": HOT_KEY})
    deadline = time.monotonic() + 120
    while not all(k in bench.handovers for k in keys):
        if time.monotonic() > deadline:
            raise RuntimeError(f"handover batch {tag}: {sum(k in bench.handovers for k in keys)} of {n} ran")
        bench.poll(0.2)
    runs = [bench.handovers.pop(k) for k in keys]
    for h in runs:
        ended = None
        for _ in range(500):
            found = bench.http.get(f"/v1/events/{bench.ids[h.key]}/runs").json()["data"]
            if found and found[0]["ended_at"]:
                ended = found[0]
                break
            time.sleep(0.01)
        if ended is None:
            raise RuntimeError(f"handover run of {h.key} did not end")
        if ended["status"] != "Completed":
            raise RuntimeError(f"handover run ended {ended['status']}: {json.dumps(ended)}")
        h.started_at = _stamp(ended["run_started_at"])
        h.ended_at = _restored(_stamp(ended["ended_at"]))
    runs.sort(key=lambda h: h.start)
    from_commit, from_end, overlaps = [], [], 0
    for a, b in itertools.pairwise(runs):
        overlaps += b.start < a.end
        if b.started_at > a.ended_at:
            continue  # b was not waiting yet when a's slot went
        from_commit.append(b.start - a.ended_at)
        from_end.append(b.start - a.end)
    return from_commit, from_end, overlaps


def measure(
    opts: scenario.Options,
    children: procs.Children,
    tag: str,
    *,
    checkpoints: bool = True,
    database: Database | None = None,
    handover: bool = True,
) -> dict[str, Any]:
    """Scenario A, and B if `handover` (see the module doc) on one platform."""
    env = default_poll_env()
    dev, url = start_dev(
        children, opts, tag, checkpoints=checkpoints, env=env, database_url=None if database is None else database.dsn
    )
    listener = Listener()
    bench: _Bench | None = None
    worker: procs.Child | None = None
    try:
        worker = start_worker(children, "ours", url, f"{tag}-worker", env={**env, NOTIFY_ENV: listener.address})
        bench = _Bench(url, listener, worker, dev)
        bench.ready()
        plain, keyed = _Side(), _Side()
        from_commit: list[float] = []
        from_end: list[float] = []
        overlaps = 0
        rounds = opts.count(3, 2)
        for r in range(rounds):
            order = [(plain, apps.FIVE_EVENT), (keyed, apps.FIVE_KEYED_EVENT)]
            for side, event in order if r % 2 == 0 else order[::-1]:
                _window(bench, side, event, opts, database)
            if handover:
                c, e, o = _handover_batch(bench, opts.count(200, 100), f"{tag}-h{r}")
                from_commit += c
                from_end += e
                overlaps += o
        out: dict[str, Any] = {"rounds": rounds, "in_flight": IN_FLIGHT, "keys": KEYS, "key_limit": apps.KEY_LIMIT}
        out.update(plain.figures("plain", database))
        out.update(keyed.figures("keyed", database))
        for figure in ("steps_per_s", "inflight_steps_per_s"):
            base = out[f"plain_{figure}"]
            out[f"keyed_{figure.replace('steps_per_s', 'ratio')}"] = out[f"keyed_{figure}"] / base if base else 0.0
        if not handover:
            return out
        c_sum, e_sum = summary_ms(from_commit), summary_ms(from_end)
        out.update(
            {
                "handover_n": c_sum["n"],
                "handover_commit_p50_ms": c_sum["p50_ms"],
                "handover_commit_p99_ms": c_sum["p99_ms"],
                "handover_end_p50_ms": e_sum["p50_ms"],
                "handover_end_p99_ms": e_sum["p99_ms"],
                "handover_end_max_ms": e_sum["max_ms"],
                # Steps of the same key seen running at once on the worker (0 if the limit held).
                "handover_overlaps": overlaps,
            }
        )
        return out
    finally:
        if bench is not None:
            bench.close()
        listener.close()
        if worker is not None:
            worker.stop()
        dev.stop()


#: The cases, with the prefix of their figures.
CASES = (("sqlite", True), ("sqlite_one_step", False), ("pg", True))


def run(opts: scenario.Options, children: procs.Children) -> dict[str, Any]:
    out: dict[str, Any] = {}
    chosen = set(opts.extra.cases.split(",")) if opts.extra.cases else {name for name, _ in CASES}
    for prefix, checkpoints in CASES:
        if prefix not in chosen:
            continue
        if prefix != "pg":
            # B only with checkpoints: one step per request, a run's next request
            # takes the slot again after its step, so run ends are not handovers.
            figures = measure(opts, children, prefix, checkpoints=checkpoints, handover=checkpoints)
        else:
            try:
                cluster = Cluster()
            except RuntimeError as exc:
                out["pg_error"] = str(exc)
                continue
            try:
                cluster.start(children)
                figures = measure(opts, children, prefix, database=cluster.create_database("bench_flow"))
            finally:
                cluster.stop()
        out.update({f"{prefix}_{k}": v for k, v in figures.items()})
    return out


def _args(parser: argparse.ArgumentParser) -> None:
    names = ",".join(name for name, _ in CASES)
    parser.add_argument("--cases", default="", help=f"comma-separated, of {names} (default: all)")


def main(argv: list[str] | None = None) -> int:
    return scenario.main("flow_control", run, argv, _args)


if __name__ == "__main__":
    sys.exit(main())
