"""Baseline: what a Python user would pick instead — Celery 5.5 on a local redis-server.

Processes: `redis-server` (broker and result backend, on a free port, no
persistence), a Celery worker with 2 prefork processes and `acks_late=True`,
and this driver.

- single task: `noop.delay().get()` one at a time (client-observed round trip);
- chain of 5: `chain(noop.si() x 5)` one at a time; latency is the last
  task's stored `date_done` minus the time it was submitted (the same rule
  as our runs' `ended_at`), the client-observed `.get()` is kept for context;
- throughput: 300 chains kept in flight (closed loop, see `bench.load`),
  steps/s = 5 x chains completed per second, and the latency of chains
  started inside the window.

`python -m bench.celery_baseline` runs it alone; `redis-server` must be on PATH.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from typing import Any

from bench import procs, scenario
from bench.load import closed_loop
from bench.notify import ENV as NOTIFY_ENV
from bench.notify import Listener
from bench.stats import summary_ms

CHAIN = 5
IN_FLIGHT = 300


def start_redis(children: procs.Children) -> tuple[str, procs.Child]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server not found on PATH (make bench installs it with apt-get)")
    port = procs.free_port()
    child = children.start(
        "redis",
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"],
    )
    cli = shutil.which("redis-cli")

    def up() -> bool:
        if cli is None:
            import socket

            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        out = subprocess.run([cli, "-p", str(port), "ping"], capture_output=True, text=True, check=False)
        return out.stdout.strip() == "PONG"

    procs.wait_until(up, 20, "redis-server")
    return f"redis://127.0.0.1:{port}/0", child


def start_celery(children: procs.Children) -> tuple[procs.Child, procs.Child]:
    """`redis-server` and a Celery worker (2 prefork processes), ready for
    tasks; returns (worker, redis). The worker inherits this process's
    environment; `BENCH_REDIS_URL` is set here before `bench.celery_tasks`
    is imported."""
    url, redis_proc = start_redis(children)
    os.environ["BENCH_REDIS_URL"] = url
    from bench.celery_tasks import noop

    worker = children.start(
        "celery-worker",
        procs.python(
            "-m",
            "celery",
            "-A",
            "bench.celery_tasks",
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"bench-{os.getpid()}@localhost",
        ),
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            noop.delay().get(timeout=5)
            break
        except Exception:
            if time.monotonic() > deadline or not worker.alive():
                raise RuntimeError(f"celery worker did not start:\n{worker.tail()}") from None
    return worker, redis_proc


def stop_celery(worker: procs.Child, redis_proc: procs.Child) -> None:
    """Stop what `start_celery` started, dropping this process's result handles first."""
    from bench.celery_tasks import app

    _forget_results(app)
    worker.stop()
    redis_proc.stop()


def five(key: str | None = None) -> Any:
    """A chain of `CHAIN` no-op tasks, submitted; the last one names `key`."""
    from celery import chain

    from bench.celery_tasks import noop

    return chain(*[noop.si() for _ in range(CHAIN - 1)], noop.si(key)).apply_async()


def chains_one_at_a_time(count: int) -> tuple[list[float], list[float]]:
    """`count` chains one after another: each one's latency by the stored
    rule (the last task's `date_done` minus the wall time just before it was
    submitted) and as `.get()` saw it (seconds)."""
    stored: list[float] = []
    client: list[float] = []
    for _ in range(count):
        t_wall = time.time()
        t0 = time.perf_counter()
        res = five()
        res.get(timeout=10)
        client.append(time.perf_counter() - t0)
        stored.append(res.date_done.timestamp() - t_wall)
    return stored, client


def run(opts: scenario.Options, children: procs.Children) -> dict[str, Any]:
    listener = Listener()
    os.environ[NOTIFY_ENV] = listener.address  # the worker reports each chain's last task
    worker, redis_proc = start_celery(children)
    import celery

    from bench.celery_tasks import app, noop

    # --- single task round trip
    for _ in range(50):
        noop.delay().get(timeout=10)
    rtt: list[float] = []
    for _ in range(opts.count(1000, 300)):
        t0 = time.perf_counter()
        noop.delay().get(timeout=10)
        rtt.append(time.perf_counter() - t0)

    # --- one chain at a time
    chains_one_at_a_time(20)
    chain_stored, chain_client = chains_one_at_a_time(opts.count(300, 100))

    # --- throughput with IN_FLIGHT chains in flight
    results: dict[str, str] = {}

    def submit(keys: list[str]) -> None:
        for k in keys:
            results[k] = five(k).id

    cpu0 = {"celery": worker.cpu_seconds(), "redis": redis_proc.cpu_seconds()}
    t0 = time.time()
    loop = closed_loop(
        submit,
        listener,
        in_flight=IN_FLIGHT,
        warmup=opts.pick(3.0, 2.0),
        seconds=opts.pick(12.0, 5.0),
        prefix="c",
    )
    wall = time.time() - t0
    cpu = {"celery": worker.cpu_seconds() - cpu0["celery"], "redis": redis_proc.cpu_seconds() - cpu0["redis"]}
    keys = loop.window_keys()
    random.shuffle(keys)
    loaded: list[float] = []
    for k in keys[:1000]:
        done = app.AsyncResult(results[k]).date_done
        if done is not None:
            loaded.append(done.timestamp() - loop.sent[k])
    listener.close()
    _forget_results(app)
    steps_per_s = loop.jobs_per_s * CHAIN
    total_steps = len(loop.done) * CHAIN
    t = summary_ms(rtt)
    c = summary_ms(chain_stored)
    cc = summary_ms(chain_client)
    cl = summary_ms(loaded)
    return {
        "task_rtt_p50_ms": t["p50_ms"],
        "task_rtt_p99_ms": t["p99_ms"],
        "chain5_p50_ms": c["p50_ms"],
        "chain5_p99_ms": c["p99_ms"],
        "chain5_client_p50_ms": cc["p50_ms"],
        "chain_steps_per_s": steps_per_s,
        "chain_in_flight": IN_FLIGHT,
        "chain5_loaded_p50_ms": cl["p50_ms"],
        "chain5_loaded_p99_ms": cl["p99_ms"],
        "chains_unfinished": loop.unfinished,
        "cpu_celery_s": cpu["celery"],
        "cpu_redis_s": cpu["redis"],
        "cpu_us_per_step": (cpu["celery"] + cpu["redis"]) / max(1, total_steps) * 1e6,
        "cpu_share_celery": cpu["celery"] / wall,
        "celery_version": celery.__version__,
    }


def _forget_results(app: Any) -> None:
    """Drop the result handles Celery keeps while redis is still up; otherwise
    each one tries to unsubscribe (and reconnect) when collected at exit."""
    import gc

    for part in getattr(app.backend, "_pending_results", None) or ():  # (concrete, weak) mappings
        part.clear()
    app.backend.remove_pending_result = lambda result: result  # nothing to unsubscribe from any more
    gc.collect()


def main(argv: list[str] | None = None) -> int:
    return scenario.main("celery_baseline", run, argv)


if __name__ == "__main__":
    sys.exit(main())
