"""Baseline: raw WebSocket echo with the gateway's libraries (websockets + uvloop).

Two processes: an echo server and this client, over loopback, 300-byte
binary frames, no compression, the same connection options the gateway and
worker use. This is the floor for everything that crosses the gateway.

- round trip: one frame out, wait for the echo, repeat (p50/p99);
- pipelined: a sender keeps WINDOW frames in flight on one connection and
  a receiver counts echoes, for a fixed window of time (messages/s, and the
  server's CPU per echoed message).

`python -m bench.echo` runs it alone.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import uvloop
import websockets
from websockets.asyncio.server import ServerConnection, serve

from bench import procs, scenario
from bench.stats import summary_ms

FRAME = 300
WINDOW = 256


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def _serve(port: int) -> None:
    async with serve(_echo, "127.0.0.1", port, ping_interval=None, compression=None, max_queue=64):
        print("READY", flush=True)
        await asyncio.Future()


async def _client(port: int, rounds: int, warmup: int, seconds: float) -> dict[str, Any]:
    payload = os.urandom(FRAME)
    async with websockets.connect(f"ws://127.0.0.1:{port}/", ping_interval=None, compression=None, max_queue=64) as ws:
        for _ in range(warmup):
            await ws.send(payload)
            await ws.recv()
        samples: list[float] = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            await ws.send(payload)
            await ws.recv()
            samples.append(time.perf_counter() - t0)

        window = asyncio.Semaphore(WINDOW)
        received = 0
        stop = time.perf_counter() + seconds

        async def sender() -> None:
            while time.perf_counter() < stop:
                await window.acquire()
                await ws.send(payload)

        async def receiver() -> None:
            nonlocal received
            while True:
                await ws.recv()
                received += 1
                window.release()

        recv_task = asyncio.create_task(receiver())
        t0 = time.perf_counter()
        await sender()
        while window._value < WINDOW:  # drain what is still in flight
            await asyncio.sleep(0.001)
        elapsed = time.perf_counter() - t0
        recv_task.cancel()
    return {"rtt": summary_ms(samples), "pipelined": received / elapsed, "pipelined_count": received}


def run(opts: scenario.Options, children: procs.Children) -> dict[str, Any]:
    port = procs.free_port()
    server = children.start("echo-server", procs.python("-m", "bench.echo", "--serve", str(port)), stdout_pipe=True)
    server.expect("READY", 20)
    cpu0 = server.cpu_seconds()
    rounds = opts.count(5000, 1500)
    seconds = opts.pick(6.0, 3.0)
    res = uvloop.run(_client(port, rounds, 500, seconds))
    server_cpu = server.cpu_seconds() - cpu0
    rtt = res["rtt"]
    total_msgs = rounds + 500 + res["pipelined_count"]
    return {
        "rtt_p50_ms": rtt["p50_ms"],
        "rtt_p99_ms": rtt["p99_ms"],
        "rtt_n": rtt["n"],
        "pipelined_msgs_per_s": res["pipelined"],
        "server_cpu_us_per_msg": server_cpu / total_msgs * 1e6,
        "frame_bytes": FRAME,
        "window": WINDOW,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        uvloop.run(_serve(int(argv[1])))
        return 0
    return scenario.main("echo", run, argv)


if __name__ == "__main__":
    sys.exit(main())
