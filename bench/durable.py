"""Ours, 2: `connect dev` durable end to end.

A real `connect dev` process (API, gateway, executor, SQLite) and a worker
process serving `five-steps` (five no-op steps). Events go in through
`POST /e/{key}`; each starts one run, which the executor drives step by step
through the gateway, storing every step's result, until the run ends.

- latency: one run at a time; the run's stored `ended_at` minus the wall
  time just before its event was posted (the same rule as Celery's
  `date_done`). `ended_at` has millisecond precision (it is truncated), so
  taken as it is every latency would read 0.5 ms short on average. The
  driver adds back a uniform random 0-1 ms (the fraction truncated away is
  uniform: runs start at random points of a millisecond), which makes the
  latencies unbiased; each one is off by less than 1 ms either way, and a
  p50 over 100-300 runs by a few hundredths of a millisecond;
- the driver learns that a run is (nearly) done from the UDP datagram its
  last step sends (`bench.notify`), which leaves before that step is stored.
  It then waits `READBACK_DELAY` before it reads the run back through the
  API: a readback that lands while `connect dev` is still finishing the run
  takes that process's loop (and one of the machine's two vCPUs) from it, and
  its cost was counted in the run (about 1 ms of a 3.7 ms p50 before the
  delay, see bench/README.md). Celery's driver waits in `.get()` on Redis,
  which touches no Celery worker, so both drivers now stay out of the timed
  path. A readback that still finds the run running is counted
  (`run_early_reads`): that run's latency includes the disturbance;
- Celery's baseline for this latency is measured here too, interleaved:
  `redis-server` and the Celery worker of `bench.celery_baseline` run
  beside `connect dev`, and the runs one at a time go in `BLOCKS` blocks,
  each followed by as many 5-task chains one at a time (the same rule:
  the last task's stored `date_done` minus the wall time just before
  submission). Measured minutes apart, in separate scenarios, the two p50s
  each moved with the host by up to 1.7x between runs, and not together,
  so their ratio moved more than either system; alternated, both see the
  same moments. The CPU shares of the runs one at a time count our blocks
  only;
- events are posted with the standard library's `http.client` over one
  keep-alive connection: the driver's own cost should not count as ours,
  and `httpx` spends about 0.3 ms more per POST on this machine;
- throughput: 300 runs kept in flight (closed loop, `bench.load`), steps/s =
  5 x runs completed per second, plus the latency of runs started inside
  the window (a sample of up to 1000, read back through `/v1/events/...`);
- profile: an extra loaded window with py-spy on both processes.

The worker is ours (`connect worker bench.apps:client`) or the official
SDK's (`bench.official_app`), see `bench.workers`. `python -m bench.durable`
runs it alone with ours.
"""

from __future__ import annotations

import http.client
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench import celery_baseline, procs, profiles, scenario
from bench.dispatch import start_worker
from bench.load import closed_loop
from bench.notify import ENV as NOTIFY_ENV
from bench.notify import Listener
from bench.postgres import Database
from bench.stats import summary_ms

STEPS = 5
IN_FLIGHT = 300
EVENT = "bench/five"
#: From the last step's datagram to the first readback of a run one at a time
#: (see the module doc): the rest of a run takes about 0.4 ms after it here.
READBACK_DELAY = 0.002
#: Blocks of runs one at a time, each followed by as many of Celery's chains.
BLOCKS = 10
#: Runs (and chains) at the start of each block that are not counted: they
#: follow the other side's block (see bench/README.md: our window-on p50
#: still gains less beside Celery's blocks, for reasons not known).
BLOCK_WARMUP = 5
#: Seconds after a window before PostgreSQL's statistics are read (see `bench.dbos_baseline`).
STATS_SETTLE = 1.2


_dither = random.Random(5)


def _restored(ended_at: float) -> float:
    """A millisecond-truncated end time plus the fraction truncated away, drawn (see the module doc)."""
    return ended_at + _dither.random() / 1000


class _EventPoster:
    """`POST /e/{key}` over one keep-alive `http.client` connection."""

    def __init__(self, url: str, key: str = "bench") -> None:
        parts = urlsplit(url)
        self._conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)
        self._path = f"/e/{key}"

    def post(self, events: list[dict[str, Any]]) -> list[str]:
        body = json.dumps(events).encode()
        try:
            self._conn.request("POST", self._path, body=body, headers={"content-type": "application/json"})
            resp = self._conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # The API closes a keep-alive connection idle for 5 s (a slow worker
            # completing nothing for that long): that request never reached
            # it, so it goes again on a new connection.
            self._conn.close()
            self._conn.request("POST", self._path, body=body, headers={"content-type": "application/json"})
            resp = self._conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"POST {self._path}: {resp.status} {data[:200]!r}")
        ids: list[str] = json.loads(data)["ids"]
        return ids

    def close(self) -> None:
        self._conn.close()


def _why(run: dict[str, Any]) -> str:
    """A failed run's error first (the report shows the start of it), then the run."""
    output = run.get("output")
    if isinstance(output, dict) and "message" in output:
        return (
            f"{output.get('name', 'Error')}: {output['message']} (run {run.get('run_id')} of {run.get('function_id')})"
        )
    return json.dumps(run)


def _ended_at(http: httpx.Client, event_id: str, timeout: float = 30.0) -> tuple[float | None, int]:
    """The stored end of the event's run (epoch seconds; None if it did not
    end in time) and how many reads found it still running."""
    deadline = time.monotonic() + timeout
    early = 0
    while time.monotonic() < deadline:
        runs = http.get(f"/v1/events/{event_id}/runs").json()["data"]
        if runs and runs[0]["status"] != "Running":
            if runs[0]["status"] != "Completed":
                raise RuntimeError(f"run ended {runs[0]['status']}: {_why(runs[0])}")
            return datetime.fromisoformat(runs[0]["ended_at"]).timestamp(), early
        early += 1
        time.sleep(0.002)
    return None, early


def start_dev(
    children: procs.Children,
    opts: scenario.Options,
    tag: str,
    *,
    checkpoints: bool = True,
    env: dict[str, str] | None = None,
    database_url: str | None = None,
    command: Sequence[str] = ("-m", "connect", "dev"),
) -> tuple[procs.Child, str]:
    """`connect dev` on a SQLite file in the work directory, or on PostgreSQL at `database_url`.
    `command`: what runs it (Python's arguments before `connect dev`'s own)."""
    port, gw_port = procs.free_port(), procs.free_port()
    store = ["--db", str(opts.workdir / f"{tag}.db")] if database_url is None else ["--database-url", database_url]
    dev = children.start(
        f"{tag}-dev",
        procs.python(
            *command,
            "--port",
            str(port),
            "--gateway-port",
            str(gw_port),
            *store,
            *([] if checkpoints else ["--no-checkpoint-steps"]),
        ),
        env=env,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not dev.alive():
            raise RuntimeError(f"connect dev exited:\n{dev.tail()}")
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    procs.wait_until(up, 60, "connect dev")
    return dev, url


def measure(
    opts: scenario.Options,
    children: procs.Children,
    *,
    worker_kind: str,
    sequential: int,
    seconds: float,
    profile_seconds: float,
    tag: str,
    checkpoints: bool = True,
    env: dict[str, str] | None = None,
    baseline: Callable[[int], list[float]] | None = None,
    warmup: float | None = None,
    database: Database | None = None,
    platform: Callable[[], tuple[dict[str, procs.Child], str]] | None = None,
    worker_count: int = 1,
) -> dict[str, Any]:
    """`checkpoints=False` runs `connect dev --no-checkpoint-steps`: one step per
    request. `env` goes to `connect dev` and the worker. `baseline(n)`, when
    given, measures n of the baseline's chains one at a time (latencies in
    seconds); the runs one at a time then alternate with it in `BLOCKS`
    blocks (see the module doc). `warmup`: seconds of load before the
    throughput window (default 3, 2 with `--quick`). `database`: run on that
    PostgreSQL database instead of a SQLite file, and add the server's CPU and
    the database's statements and commits per step to the throughput figures.
    `platform()`, when given, starts the platform's processes instead of one
    `connect dev` (they count as one in the `dev_` figures; each one's CPU per
    step is added as `<name>_cpu_us_per_step`) and returns them by name with
    the API's URL. `worker_count` workers serve the runs."""
    dev: procs.Child | _Group
    if platform is None:
        dev, url = start_dev(
            children,
            opts,
            tag,
            checkpoints=checkpoints,
            env=env,
            database_url=None if database is None else database.dsn,
        )
        roles = {"dev": dev}
    else:
        roles, url = platform()
        dev = _Group(roles)
    listener = Listener()
    workers: list[procs.Child] = []
    try:
        for i in range(worker_count):
            name = f"{tag}-worker" if worker_count == 1 else f"{tag}-worker{i}"
            workers.append(
                start_worker(children, worker_kind, url, name, env={**(env or {}), NOTIFY_ENV: listener.address})
            )
    except Exception:  # e.g. no Node for the TypeScript worker: the next case gets a quiet machine
        listener.close()
        for started in workers:
            started.stop()
        dev.stop()
        raise
    worker: procs.Child | _Group = (
        workers[0] if worker_count == 1 else _Group({f"worker{i}": w for i, w in enumerate(workers)})
    )
    out: dict[str, Any] = {"worker": worker_kind}
    http = httpx.Client(base_url=url, timeout=30)
    poster = _EventPoster(url)
    try:
        sent_ids: dict[str, str] = {}

        def submit(keys: list[str]) -> None:
            event_ids = poster.post([{"name": EVENT, "data": {"k": k}} for k in keys])
            for k, eid in zip(keys, event_ids, strict=True):
                sent_ids[k] = eid

        # The first events may come before the worker registered the function
        # (they start no run): probe until one completes.
        deadline = time.monotonic() + 90
        probe = 0
        while True:
            if not worker.alive():
                raise RuntimeError(f"worker exited:\n{worker.tail()}")
            submit([f"probe{probe}"])
            got = listener.poll(1.0)
            if any(k.startswith("probe") for k, _ in got):
                break
            probe += 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"no run completed within 90s\ndev:\n{dev.tail()}\nworker:\n{worker.tail()}")
        time.sleep(0.5)
        listener.poll(0.05)

        # --- one run at a time
        if sequential:
            lat: list[float] = []
            early_reads = 0
            blocks = BLOCKS if baseline is not None else 1
            base: list[float] = []
            if baseline is not None:
                baseline(20)  # the first ones warm up
            wall = dev_cpu = worker_cpu = 0.0
            done = 0
            for block in range(blocks):
                n = sequential * (block + 1) // blocks - done
                c0 = (time.monotonic(), dev.cpu_seconds(), worker.cpu_seconds())
                warm = 10 if block == 0 else BLOCK_WARMUP
                for i in range(n + warm):
                    key = f"s{block}-{i}"
                    t_send = time.time()
                    submit([key])
                    got: list[tuple[str, float]] = []
                    limit = time.monotonic() + 30
                    while not any(k == key for k, _ in got) and time.monotonic() < limit:
                        got += listener.poll(1.0)
                    time.sleep(READBACK_DELAY)
                    ended, early = _ended_at(http, sent_ids[key])
                    if ended is None:
                        raise RuntimeError(f"run of {key} did not end")
                    if i >= warm:  # the first ones warm up
                        lat.append(_restored(ended) - t_send)
                        early_reads += early > 0
                c1 = (time.monotonic(), dev.cpu_seconds(), worker.cpu_seconds())
                wall, dev_cpu, worker_cpu = wall + c1[0] - c0[0], dev_cpu + c1[1] - c0[1], worker_cpu + c1[2] - c0[2]
                done += n
                if baseline is not None:
                    baseline(BLOCK_WARMUP)
                    base += baseline(n)
            s = summary_ms(lat)
            out["run_p50_ms"], out["run_p99_ms"], out["run_n"] = s["p50_ms"], s["p99_ms"], s["n"]
            out["run_early_reads"] = early_reads
            out["sequential_dev_cpu_share"] = dev_cpu / wall
            out["sequential_worker_cpu_share"] = worker_cpu / wall
            if baseline is not None:
                b = summary_ms(base)
                out["interleaved_chain5_p50_ms"], out["interleaved_chain5_p99_ms"] = b["p50_ms"], b["p99_ms"]
                out["interleaved_chain5_n"], out["interleaved_blocks"] = b["n"], blocks

        # --- IN_FLIGHT runs in flight
        if seconds:
            counters0 = database.counters() if database is not None else None
            pg0 = database.cluster.cpu_seconds() if database is not None else 0.0
            role_cpu0 = {name: child.cpu_seconds() for name, child in roles.items()}
            c0 = (time.monotonic(), dev.cpu_seconds(), worker.cpu_seconds())
            loop = closed_loop(
                submit,
                listener,
                in_flight=IN_FLIGHT,
                warmup=opts.pick(3.0, 2.0) if warmup is None else warmup,
                seconds=seconds,
                prefix="r",
            )
            c1 = (time.monotonic(), dev.cpu_seconds(), worker.cpu_seconds())
            wall = c1[0] - c0[0]
            if platform is not None:
                for name, child in roles.items():
                    out[f"{name}_cpu_us_per_step"] = (
                        (child.cpu_seconds() - role_cpu0[name]) / max(1, len(loop.done) * STEPS) * 1e6
                    )
            if database is not None and counters0 is not None:
                pg_cpu = database.cluster.cpu_seconds() - pg0
                time.sleep(STATS_SETTLE)
                counted = database.counters() - counters0
                steps = max(1, len(loop.done) * STEPS)
                out["pg_cpu_share"] = pg_cpu / wall
                out["pg_cpu_us_per_step"] = pg_cpu / steps * 1e6
                out["statements_per_step"] = counted.statements / steps
                out["commits_per_step"] = counted.commits / steps
            keys = loop.window_keys()
            random.shuffle(keys)
            loaded: list[float] = []
            for k in keys[: opts.count(1000, 300)]:
                ended, _ = _ended_at(http, sent_ids[k], timeout=10)
                if ended is not None:
                    loaded.append(_restored(ended) - loop.sent[k])
            s = summary_ms(loaded)
            total_runs = len(loop.done)
            out.update(
                {
                    "steps_per_s": loop.jobs_per_s * STEPS,
                    "inflight_steps_per_s": loop.inflight_jobs_per_s * STEPS,
                    "runs_per_s": loop.jobs_per_s,
                    "in_flight": IN_FLIGHT,
                    "loaded_run_p50_ms": s["p50_ms"],
                    "loaded_run_p99_ms": s["p99_ms"],
                    "runs_unfinished": loop.unfinished,
                    "dev_cpu_share": (c1[1] - c0[1]) / wall,
                    "worker_cpu_share": (c1[2] - c0[2]) / wall,
                    "dev_cpu_us_per_step": (c1[1] - c0[1]) / max(1, total_runs * STEPS) * 1e6,
                    "worker_cpu_us_per_step": (c1[2] - c0[2]) / max(1, total_runs * STEPS) * 1e6,
                }
            )

        # --- profile window
        if profile_seconds and platform is None:
            spies = [
                profiles.start(dev.pid, profile_seconds, opts.workdir / f"{tag}-dev.prof"),
                profiles.start(worker.pid, profile_seconds, opts.workdir / f"{tag}-worker.prof"),
            ]
            time.sleep(0.8)
            closed_loop(submit, listener, in_flight=IN_FLIGHT, warmup=0.0, seconds=profile_seconds + 1.0, prefix="p")
            for spy in spies:
                profiles.finish(spy)
            for role in ("dev", "worker"):
                summary = profiles.summarize(opts.workdir / f"{tag}-{role}.prof", profile_seconds)
                out[f"profile_{role}"] = profiles.render(f"{tag}: {role} process", summary)
                out[f"profile_{role}_data"] = summary
    finally:
        http.close()
        poster.close()
        listener.close()
        worker.stop()
        dev.stop()
    return out


class _Group:
    """Several processes measured as one (the platform's roles, or the workers)."""

    def __init__(self, members: dict[str, procs.Child]) -> None:
        self.members = members

    @property
    def pid(self) -> int:
        return next(iter(self.members.values())).pid

    def alive(self) -> bool:
        return all(child.alive() for child in self.members.values())

    def cpu_seconds(self) -> float:
        return sum(child.cpu_seconds() for child in self.members.values())

    def tail(self) -> str:
        return "\n".join(f"--- {name}:\n{child.tail(1500)}" for name, child in self.members.items())

    def stop(self) -> None:
        for child in self.members.values():
            child.stop()


def run(opts: scenario.Options, children: procs.Children) -> dict[str, Any]:
    """Default settings (the adaptive poll window, `connect.polling`) for every
    figure; then the runs one at a time and 300 in flight again with the
    window off in `connect dev` and the worker (figures prefixed `off_`)."""
    from bench.dispatch import default_poll_env, poll_env
    from connect.polling import DEFAULT_WINDOW

    common: dict[str, Any] = {"worker_kind": "ours", "sequential": opts.count(300, 100)}
    celery_worker, redis_proc = celery_baseline.start_celery(children)
    try:
        out = measure(
            opts,
            children,
            **common,
            seconds=opts.pick(12.0, 5.0),
            profile_seconds=opts.pick(8.0, 4.0) if opts.profile else 0.0,
            tag="durable",
            env=default_poll_env(),
            baseline=lambda n: celery_baseline.chains_one_at_a_time(n)[0],
        )
    finally:
        celery_baseline.stop_celery(celery_worker, redis_proc)
    # Context: the same runs with one step per request, as the official protocol has it.
    one = measure(
        opts,
        children,
        **common,
        seconds=opts.pick(8.0, 4.0),
        profile_seconds=0.0,
        tag="durable-one-step",
        checkpoints=False,
        env=default_poll_env(),
    )
    for key in ("run_p50_ms", "run_p99_ms", "steps_per_s", "dev_cpu_us_per_step", "worker_cpu_us_per_step"):
        out[f"one_step_{key}"] = one[key]
    off = measure(
        opts,
        children,
        **common,
        seconds=opts.pick(8.0, 4.0),
        profile_seconds=0.0,
        tag="durable-off",
        env=poll_env("0"),
    )
    out["poll_window_ms"] = DEFAULT_WINDOW * 1000
    for key in (
        "run_p50_ms",
        "run_p99_ms",
        "run_early_reads",
        "steps_per_s",
        "sequential_dev_cpu_share",
        "sequential_worker_cpu_share",
        "dev_cpu_us_per_step",
        "worker_cpu_us_per_step",
    ):
        out[f"off_{key}"] = off[key]
    return out


def main(argv: list[str] | None = None) -> int:
    return scenario.main("durable", run, argv)


if __name__ == "__main__":
    sys.exit(main())
