"""The floor of one step: what the path a step must take costs, with no platform code in it.

The raw echo (`bench.echo`) is one frame out and one back. A step through the
gateway cannot be that cheap, whatever the code does, because the protocol
and the product ask for more on its way:

- `echo`: the gateway sends a 300-byte frame; the worker sends it back;
- `ack`: the worker first ACKs the request (a small frame of its own, sent
  before user code starts, as `WORKER_REQUEST_ACK` is), then replies;
- `hop`: as `ack`, but the reply is made on a second thread's event loop and
  handed back, since user code runs apart from the connection so that a
  blocked user loop cannot stop heartbeats;
- `store`: as `hop`, and the gateway commits the reply to SQLite (WAL,
  `synchronous=NORMAL`, as the store) before the step counts as done.

Two processes like the real ones: this one is the gateway side (a
websockets server on uvloop); the worker side connects to it as a client.
The stages are measured interleaved, one sample of each per round, so drift
on a noisy machine hits them alike. Each stage's p50 is reported with its
ratio to this run's `echo` stage; `store` is the least a gateway-only round
trip (scenario 1) can cost, and six of it the least the five-step run of
scenario 2 can (one request per step plus the one that ends the run).

`python -m bench.floor` runs it alone.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import uvloop
import websockets
from websockets.asyncio.server import ServerConnection, serve

from bench import procs, scenario
from bench.stats import summary_ms

FRAME = 300
STAGES = ("echo", "ack", "hop", "store")
_MODE = {"echo": b"e", "ack": b"a", "hop": b"h", "store": b"h"}
_ACK = b"A" * 40
_OPTIONS: dict[str, Any] = {"ping_interval": None, "compression": None, "max_queue": 64}


# --- worker side (child process) --------------------------------------------------------


async def _machinery(url: str, user_loop: asyncio.AbstractEventLoop) -> None:
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    async with websockets.connect(url, **_OPTIONS) as ws:

        def send_soon(frame: bytes) -> None:
            task = loop.create_task(ws.send(frame))
            pending.add(task)
            task.add_done_callback(pending.discard)

        def on_user_loop(frame: bytes) -> None:
            # Where the step's code would run; then back to the connection's thread.
            loop.call_soon_threadsafe(send_soon, frame)

        async for message in ws:
            frame = message if isinstance(message, bytes) else message.encode()
            mode = frame[:1]
            if mode == b"e":
                await ws.send(frame)
                continue
            await ws.send(_ACK)
            if mode == b"a":
                await ws.send(frame)
            else:
                user_loop.call_soon_threadsafe(on_user_loop, frame)
    user_loop.call_soon_threadsafe(user_loop.stop)


def _worker(url: str) -> None:
    user_loop = uvloop.new_event_loop()
    machinery = threading.Thread(target=lambda: uvloop.run(_machinery(url, user_loop)), daemon=True)
    machinery.start()
    user_loop.run_forever()


# --- gateway side (this process) ---------------------------------------------------------


def _open_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("CREATE TABLE replies (request_id TEXT PRIMARY KEY, data BLOB NOT NULL)")
    return db


async def _measure(children: procs.Children, db_path: Path, rounds: int, warmup: int) -> dict[str, list[float]]:
    port = procs.free_port()
    joined: asyncio.Future[ServerConnection] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        if not joined.done():
            joined.set_result(ws)
        await ws.wait_closed()

    db = _open_db(db_path)
    keys = itertools.count()
    payload = os.urandom(FRAME - 1)
    async with serve(handler, "127.0.0.1", port, **_OPTIONS):
        worker = children.start(
            "floor-worker", procs.python("-m", "bench.floor", "--worker", f"ws://127.0.0.1:{port}/")
        )
        ws = await asyncio.wait_for(joined, 30)

        async def step(stage: str) -> float:
            t0 = time.perf_counter()
            await ws.send(_MODE[stage] + payload)
            reply = await ws.recv()
            if stage != "echo":
                assert reply == _ACK
                reply = await ws.recv()
            if stage == "store":
                db.execute("BEGIN")
                db.execute("INSERT INTO replies VALUES (?, ?)", (str(next(keys)), reply))
                db.execute("COMMIT")
            return time.perf_counter() - t0

        samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
        for i in range(warmup + rounds):
            for stage in STAGES:
                took = await step(stage)
                if i >= warmup:
                    samples[stage].append(took)
        await ws.close()
        worker.stop()
    db.close()
    return samples


def run(opts: scenario.Options, children: procs.Children) -> dict[str, Any]:
    rounds = opts.count(3000, 1000)
    samples = uvloop.run(_measure(children, opts.workdir / "floor.db", rounds, 300))
    out: dict[str, Any] = {"frame_bytes": FRAME, "rounds": rounds}
    echo_p50 = summary_ms(samples["echo"])["p50_ms"]
    for stage in STAGES:
        s = summary_ms(samples[stage])
        out[f"{stage}_p50_ms"], out[f"{stage}_p99_ms"] = s["p50_ms"], s["p99_ms"]
        out[f"{stage}_vs_echo"] = s["p50_ms"] / echo_p50
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        _worker(argv[1])
        return 0
    return scenario.main("floor", run, argv)


if __name__ == "__main__":
    sys.exit(main())
