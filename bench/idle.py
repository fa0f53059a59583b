"""Ours, 4: idle capacity — 10,000 idle worker connections on one gateway process.

Processes: one platform process (`connect.roles.DevServer`, i.e. what
`connect dev` runs, with a shortened heartbeat interval) and several client
processes, each holding ~2,500 connections that do the real worker handshake:
`POST /v0/connect/start` (a fresh HTTP connection each, as separate workers
would), WebSocket upgrade, GATEWAY_HELLO / WORKER_CONNECT /
GATEWAY_CONNECTION_READY / WORKER_READY, then heartbeats at the interval the
gateway announces. The connection logic is the worker's own sans-I/O
`WorkerSession`; reconnects follow the worker's policy (first retry at once,
then jittered exponential backoff: 0.5 s x 2^n + U(0, 1) s, at most 10 s).

Figures:
- RSS per connection: platform RSS with all connections ready minus its RSS
  before the first one, divided by the count;
- heartbeat CPU: platform CPU over a window of steady heartbeats, per
  heartbeat, and as a share of a core at this interval and at the default
  10 s;
- reconnect: SIGKILL the platform, start it again on the same ports and
  database, and time until every connection is READY again (from the new
  process's start, and from the moment it answers /health), with the
  per-connection distribution, the number of failed attempts and the
  kernel's count of connections a full accept queue dropped (ListenDrops).
  The restarted platform announces the product's heartbeat interval (10 s;
  `--reconnect-heartbeat` to change it): the 2 s of the heartbeat window
  would add 5,000 heartbeats a second to the herd, which no default fleet
  sends.

`python -m bench.idle` runs it alone (`--connections N` to change the count).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench import procs, profiles, scenario
from bench.stats import summary_ms
from protocol import limits

PER_CLIENT = 2500
HEARTBEAT = 2.0
RECONNECT_INITIAL = 0.5
RECONNECT_MAX = 10.0
APP = "bench-idle"


# --- the platform process -----------------------------------------------------------


def _gateway_role(argv: list[str]) -> int:
    from connect import cli
    from connect.roles import DevServer, PlatformSettings

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gateway-port", type=int, required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--heartbeat", type=float, required=True)
    args = parser.parse_args(argv)
    procs.raise_nofile()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "websockets", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = PlatformSettings(
        port=args.port, gateway_port=args.gateway_port, db=args.db, heartbeat_interval=args.heartbeat
    )
    cli.run(DevServer(settings).run())  # as `connect dev` runs it
    return 0


# --- a client process holding many connections ------------------------------------------


class _Clients:
    def __init__(self, api: str, count: int, index: int, ramp: float) -> None:
        from bench.apps import one_step
        from connect.sdk.function import functions_json

        self.api = api
        self.count = count
        self.index = index
        self.ramp = ramp
        self.functions = functions_json(APP, [one_step])
        self.ready = 0
        self.attempts = 0
        self.failures: Counter[str] = Counter()
        self.ready_at: list[float] = []  # wall time of every transition to READY
        parts = urlsplit(api)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80

    def _hello(self, start: Any, instance_id: str) -> Any:
        from protocol import connect_pb2 as pb

        hello = pb.WorkerConnectRequestData(
            connection_id=start.connection_id,
            instance_id=instance_id,
            auth_data=pb.AuthData(session_token=start.session_token, sync_token=start.sync_token),
            capabilities=b'{"connect":"v1"}',
            worker_manual_readiness_ack=True,
            system_attributes=pb.SystemAttributes(cpu_cores=2, mem_bytes=1 << 30, os="linux"),
            framework="bench",
            sdk_version="0.0.0",
            sdk_language="py",
        )
        hello.apps.add(app_name=APP, functions=self.functions)
        return hello

    async def _once(self, instance_id: str) -> None:
        """One connection's life: start, handshake, heartbeats until it ends."""
        import websockets

        from protocol import connect_pb2 as pb
        from protocol import limits
        from protocol import worker_session as ws_

        self.attempts += 1
        start = pb.StartResponse()
        start.ParseFromString(await _post_start(self.host, self.port, instance_id))
        session = ws_.WorkerSession(self._hello(start, instance_id), frozenset({APP}), time.time())
        ready = [False]
        try:
            async with websockets.connect(
                start.gateway_endpoint,
                subprotocols=[websockets.Subprotocol(limits.SUBPROTOCOL)],
                ping_interval=None,
                compression=None,
                max_queue=16,
                open_timeout=10,
            ) as ws:
                await self._converse(ws, session, ready)
        except websockets.ConnectionClosed:
            if not ready[0]:
                raise
            # An established connection ended: like the worker, reconnect at once.
        finally:
            if ready[0]:
                self.ready -= 1

    async def _converse(self, ws: Any, session: Any, ready: list[bool]) -> None:
        from protocol import worker_session as ws_

        while True:
            deadline = session.next_deadline()
            data: bytes | None = None
            try:
                async with asyncio.timeout(None if deadline is None else max(0.0, deadline - time.time())):
                    msg = await ws.recv()
                    data = msg if isinstance(msg, bytes) else msg.encode()
            except TimeoutError:
                pass
            now = time.time()
            events = session.tick(now) if data is None else session.receive(data, now)
            for event in events:
                if isinstance(event, ws_.Connected):
                    ready[0] = True
                    self.ready += 1
                    self.ready_at.append(now)
                elif isinstance(event, ws_.Dead | ws_.SyncFailed):
                    raise ConnectionError(type(event).__name__)
            for frame in session.data_to_send():
                await ws.send(frame)

    async def _connection(self, i: int) -> None:
        instance_id = f"idle-{self.index}-{i}"
        await asyncio.sleep(random.uniform(0, self.ramp))
        attempt = 0
        while True:
            try:
                await self._once(instance_id)
                attempt = 0  # it was up; the first retry after a loss is immediate
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures[_failure_kind(exc)] += 1
            attempt += 1
            delay = RECONNECT_INITIAL * 2 ** (attempt - 1) + random.uniform(0, 1)
            await asyncio.sleep(min(delay, RECONNECT_MAX))

    async def run(self, out: Path) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        tasks = [asyncio.create_task(self._connection(i)) for i in range(self.count)]
        while not stop.is_set():
            print(f"STATUS {self.ready} {self.attempts} {sum(self.failures.values())}", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)
        out.write_text(
            json.dumps({"ready_at": self.ready_at, "attempts": self.attempts, "failures": dict(self.failures)})
        )
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        print("DONE", flush=True)


async def _post_start(host: str, port: int, instance_id: str) -> bytes:
    """`POST /v0/connect/start` on a fresh connection, as a separate worker
    would make it. Plain HTTP/1.1 over a stream keeps the clients' own CPU
    cost low: they share the machine with the platform under test."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    try:
        try:
            writer.write(
                (
                    f"POST /v0/connect/start HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    f"Content-Type: application/protobuf\r\nX-Connect-Instance-Id: {instance_id}\r\n"
                    "Content-Length: 0\r\nConnection: close\r\n\r\n"
                ).encode()
            )
        except RuntimeError as exc:
            # uvloop's answer to a write on a connection the peer already closed
            # or reset (during the restart): counted as the reset it is.
            raise ConnectionResetError(str(exc)) from exc
        raw = await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if status != [b"200"]:
        raise ConnectionError(f"start {(status or [b'?'])[0].decode()}")
    return body


def _failure_kind(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, ConnectionError) and text.startswith("start "):
        return f"start_http_{text.split()[1]}"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


def _clients_role(argv: list[str]) -> int:
    import uvloop

    parser = argparse.ArgumentParser()
    parser.add_argument("--api", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--ramp", type=float, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    procs.raise_nofile()
    logging.basicConfig(level=logging.WARNING)
    uvloop.run(_Clients(args.api, args.count, args.index, args.ramp).run(Path(args.out)))
    return 0


# --- the parent ----------------------------------------------------------------------------


def _listen_drops() -> int:
    """TcpExt ListenDrops: connection attempts a full accept queue turned away (machine-wide)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenDrops", 0))
    return 0


class _Fleet:
    def __init__(self, children: list[procs.Child]) -> None:
        self.children = children
        self.status = {c.name: (0, 0, 0) for c in children}

    def poll(self) -> tuple[int, int, int]:
        for c in self.children:
            while True:
                line = c.readline(0.0)
                if line is None:
                    break
                if line.startswith("STATUS "):
                    r, a, f = (int(x) for x in line.split()[1:4])
                    self.status[c.name] = (r, a, f)
            if not c.alive():
                raise RuntimeError(f"client {c.name} exited:\n{c.tail()}")
        ready = sum(s[0] for s in self.status.values())
        attempts = sum(s[1] for s in self.status.values())
        failures = sum(s[2] for s in self.status.values())
        return ready, attempts, failures

    def wait_ready(self, predicate: Any, timeout: float) -> float:
        t0 = time.monotonic()
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            ready, _, _ = self.poll()
            if predicate(ready):
                return time.monotonic() - t0
            time.sleep(0.05)
        ready, attempts, failures = self.poll()
        raise TimeoutError(f"after {timeout:.0f}s: {ready} ready, {attempts} attempts, {failures} failures")


def run(opts: scenario.Options, children: procs.Children) -> dict[str, Any]:
    n = int(opts.extra.connections or opts.count(10_000, 2_000))
    per = min(PER_CLIENT, n)
    n_clients = (n + per - 1) // per
    port, gw_port = procs.free_port(), procs.free_port()
    db = opts.workdir / "idle.db"
    url = f"http://127.0.0.1:{port}"
    reconnect_heartbeat = float(opts.extra.reconnect_heartbeat or limits.HEARTBEAT_INTERVAL)

    def start_gateway(name: str, heartbeat: float) -> tuple[procs.Child, float]:
        gw_args = procs.python(
            "-m",
            "bench.idle",
            "--role-gateway",
            "--port",
            str(port),
            "--gateway-port",
            str(gw_port),
            "--db",
            str(db),
            "--heartbeat",
            str(heartbeat),
        )
        t0 = time.monotonic()
        gw = children.start(name, gw_args)

        def up() -> bool:
            if not gw.alive():
                raise RuntimeError(f"platform exited:\n{gw.tail()}")
            try:
                return httpx.get(f"{url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        procs.wait_until(up, 60, "the platform", interval=0.01)
        return gw, time.monotonic() - t0

    gw, _ = start_gateway("idle-platform-1", HEARTBEAT)
    time.sleep(2.0)
    rss0 = gw.rss()
    c0 = gw.cpu_seconds()
    time.sleep(2.0)
    idle_cpu_share = (gw.cpu_seconds() - c0) / 2.0

    outs = [opts.workdir / f"clients-{i}.json" for i in range(n_clients)]
    clients = []
    for i in range(n_clients):
        count = min(per, n - i * per)
        clients.append(
            children.start(
                f"idle-clients-{i}",
                procs.python(
                    "-m",
                    "bench.idle",
                    "--role-clients",
                    "--api",
                    url,
                    "--count",
                    str(count),
                    "--index",
                    str(i),
                    "--ramp",
                    str(opts.pick(10.0, 3.0)),
                    "--out",
                    str(outs[i]),
                ),
                stdout_pipe=True,
            )
        )
    fleet = _Fleet(clients)
    drops0 = _listen_drops()
    connect_all_s: float | None
    try:
        connect_all_s = fleet.wait_ready(lambda r: r >= n, opts.pick(240, 90))
    except TimeoutError:
        connect_all_s = None  # measure what did connect; the table shows the count
    time.sleep(3.0)
    connected = fleet.poll()[0]
    connect_listen_drops = _listen_drops() - drops0
    rss1 = gw.rss()

    # --- steady heartbeats
    window = opts.pick(10.0, 5.0)
    c0 = gw.cpu_seconds()
    t0 = time.monotonic()
    min_ready = connected
    while time.monotonic() - t0 < window:
        min_ready = min(min_ready, fleet.poll()[0])
        time.sleep(0.1)
    hb_cpu = gw.cpu_seconds() - c0
    hb_wall = time.monotonic() - t0
    heartbeats = connected * hb_wall / HEARTBEAT
    hb_share = hb_cpu / hb_wall

    if opts.profile:
        hb_profile_s = opts.pick(8.0, 4.0)
        spy = profiles.start(gw.pid, hb_profile_s, opts.workdir / "heartbeats.prof")
        time.sleep(hb_profile_s + 1.0)
        profiles.finish(spy)

    # --- restart: kill, start again on the same ports and database
    _, attempts0, failures0 = fleet.poll()
    t_kill = time.monotonic()
    gw.stop(grace=0.0, sig=signal.SIGKILL)
    fleet.wait_ready(lambda r: r == 0, 30)
    down_s = time.monotonic() - t_kill
    drops0 = _listen_drops()
    t_start_wall = time.time()
    t_start = time.monotonic()
    clients_cpu0 = sum(c.cpu_seconds() for c in clients)
    gw, startup_s = start_gateway("idle-platform-2", reconnect_heartbeat)
    t_up_wall = time.time()
    spy = None
    profile_s = opts.pick(20.0, 8.0)
    if opts.profile:
        spy = profiles.start(gw.pid, profile_s, opts.workdir / "reconnect.prof")
    reconnect_s: float | None
    try:
        fleet.wait_ready(lambda r: r >= connected, opts.pick(180, 60))
        reconnect_s = time.monotonic() - t_start
    except TimeoutError:
        reconnect_s = None
    reconnected = fleet.poll()[0]
    elapsed = time.monotonic() - t_start
    reconnect_listen_drops = _listen_drops() - drops0
    cpu_now = {"platform": gw.cpu_seconds(), "clients": sum(c.cpu_seconds() for c in clients) - clients_cpu0}
    _, attempts1, failures1 = fleet.poll()
    rss2 = gw.rss()
    profiles.finish(spy)

    for c in clients:
        c.send_signal(signal.SIGTERM)
    for c in clients:
        with contextlib.suppress(Exception):
            c.expect("DONE", 30)
    ready_after: list[float] = []
    fail_kinds: Counter[str] = Counter()
    for out in outs:
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(out.read_text())
            ready_after += [t - t_up_wall for t in data["ready_at"] if t >= t_start_wall]
            fail_kinds.update(data["failures"])
    dist = summary_ms(ready_after)
    result: dict[str, Any] = {
        "connections": n,
        "connected": connected,
        "client_processes": n_clients,
        "connect_all_s": connect_all_s,
        "connect_listen_drops": connect_listen_drops,
        "rss_before_mb": rss0 / 2**20,
        "rss_ready_mb": rss1 / 2**20,
        "rss_per_conn_kb": (rss1 - rss0) / max(1, connected) / 1024,
        "rss_after_reconnect_mb": rss2 / 2**20,
        "idle_cpu_share_no_conns": idle_cpu_share,
        "heartbeat_interval_s": HEARTBEAT,
        "heartbeats_per_s": connected / HEARTBEAT,
        "hb_cpu_share": hb_share,
        "hb_cpu_us_per_heartbeat": hb_cpu / heartbeats * 1e6,
        "hb_cpu_share_at_10s": hb_share * HEARTBEAT / 10.0,
        "min_ready_during_heartbeats": min_ready,
        "down_detect_s": down_s,
        "restart_startup_s": startup_s,
        "reconnect_heartbeat_interval_s": reconnect_heartbeat,
        "reconnect_all_s": reconnect_s,
        "reconnected": reconnected,
        "reconnect_all_from_up_s": None if reconnect_s is None else reconnect_s - startup_s,
        "reconnect_p50_from_up_s": dist["p50_ms"] / 1000,
        "reconnect_p99_from_up_s": dist["p99_ms"] / 1000,
        "reconnect_platform_cpu_share": cpu_now["platform"] / elapsed,
        "reconnect_clients_cpu_share": cpu_now["clients"] / elapsed,
        "reconnect_platform_cpu_ms_per_conn": cpu_now["platform"] / max(1, reconnected) * 1000,
        "reconnect_listen_drops": reconnect_listen_drops,
        "reconnect_attempts": attempts1 - attempts0,
        "reconnect_failures": failures1 - failures0,
        "failure_kinds": dict(fail_kinds),
    }
    if opts.profile:
        summary = profiles.summarize(opts.workdir / "heartbeats.prof", hb_profile_s)
        result["profile_heartbeats"] = profiles.render("idle: platform with steady heartbeats", summary)
        result["profile_heartbeats_data"] = summary
    if spy is not None:
        summary = profiles.summarize(opts.workdir / "reconnect.prof", profile_s)
        result["profile_reconnect"] = profiles.render("idle: platform during the reconnect herd", summary)
        result["profile_reconnect_data"] = summary
    for c in clients:
        c.stop(grace=5)
    gw.stop()
    return result


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connections", type=int, default=None, help="idle connections (default 10000; quick 2000)")
    parser.add_argument(
        "--reconnect-heartbeat",
        type=float,
        default=None,
        help=f"heartbeat interval of the restarted platform (default {limits.HEARTBEAT_INTERVAL:g} s, the product's)",
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--role-gateway"]:
        return _gateway_role(argv[1:])
    if argv[:1] == ["--role-clients"]:
        return _clients_role(argv[1:])
    return scenario.main("idle", run, argv, add_args=_args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
