"""A split-roles platform as real processes on one PostgreSQL database.

`Cluster` starts `connect dev --role api|gateway|executor` processes, each
with its own process id and ports, workers of our SDK (`tests.split.app`) and
the official `inngest` worker (`tests/compat/official_worker.py`), all
pointed at the one API. Every process logs to a file under the cluster's
directory; `Cluster.logs()` gathers their tails for a failure report.

The test process watches the platform the way an operator would: run
statuses through the store, the process and connection registries through
the store's own API (`StoreProbe`), and what ran on the workers' side
through the files `tests.split.app` writes (`StepLog`).
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx

from tests.e2e.harness import ROOT, Proc, complete_lines, free_port, http_status

T = TypeVar("T")

#: Ownership lease of the executors, in seconds: short, so a killed executor's runs move within the test.
OWNER_LEASE = 3.0
#: Registry entries expire this long after their last heartbeat, in seconds.
PROCESS_TTL = 6.0
#: Step request leases: a step lost with its gateway runs again after about this long.
LEASE_FLAGS = ("--lease-duration", "8", "--extend-lease-interval", "2")
#: The longest a SIGTERMed gateway waits for its workers to leave, in seconds.
DRAIN_TIMEOUT = 10.0
#: How long a process may take to come up (start, open the store, register).
START_TIMEOUT = 60.0


def poll_until(predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.2) -> float:
    """Wait until `predicate()` holds, checking every `every` seconds (the checks read the
    store and the step files, so not in a tight loop: the platform shares the CPUs); the
    seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - start


def _clean_env() -> dict[str, str]:
    """The test's environment without the platform's and workers' CONNECT_ settings,
    so each process gets only what its start names (CONNECT_GATEWAY_URL means one
    thing to a gateway and another to a worker)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    if os.environ.get("SPLIT_LOG_LEVEL"):  # e.g. debug, to follow one request across processes
        env["CONNECT_LOG_LEVEL"] = os.environ["SPLIT_LOG_LEVEL"]
    return env


class StoreProbe:
    """The test's view of the shared store, from a loop in a thread of its own.

    `store` is the platform's `Store` on the same database (for the process and
    connection registries); `sql` runs a read-only query on a small pool of its own
    (run statuses and owners, which the store's API does not list in bulk).
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="store-probe", daemon=True)
        self._thread.start()
        self._store: Any = None
        self._pool: asyncpg.Pool | None = None

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _open(self) -> None:
        from connect.store.open import open_store

        if self._pool is None:
            self._pool = await asyncpg.create_pool(self.database_url, min_size=1, max_size=2)
        if self._store is None:
            self._store = await open_store("unused.db", self.database_url, pool_size=2)

    def _with_store(self, use: Callable[[Any], Awaitable[T]]) -> T:
        async def go() -> T:
            await self._open()
            return await use(self._store)

        return self._call(go())

    def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async def go() -> list[asyncpg.Record]:
            await self._open()
            assert self._pool is not None
            rows: list[asyncpg.Record] = await self._pool.fetch(query, *args)
            return rows

        return self._call(go())

    def processes(self, role: str | None = None) -> list[Any]:
        """Unexpired `ProcessRecord`s (of `role`, or all)."""
        return self._with_store(lambda s: s.list_processes(role, int(time.time() * 1000)))

    def connections(self) -> list[Any]:
        """Unexpired `ConnectionRecord`s of every gateway."""
        return self._with_store(lambda s: s.list_connections(int(time.time() * 1000)))

    def gateways_of(self, instance_ids: Iterable[str]) -> dict[str, set[str]]:
        """For each instance id: the ids of the gateways it has a connection on."""
        wanted = set(instance_ids)
        found: dict[str, set[str]] = {i: set() for i in wanted}
        for c in self.connections():
            if c.instance_id in wanted:
                found[c.instance_id].add(c.gateway_id)
        return found

    def statuses(self, event_ids: Sequence[str]) -> dict[str, list[str]]:
        """Event id -> the statuses of its runs (an event with no run yet is left out)."""
        out: dict[str, list[str]] = collections.defaultdict(list)
        for row in self.sql("SELECT event_id, status FROM runs WHERE event_id = ANY($1::text[])", list(event_ids)):
            out[row["event_id"]].append(row["status"])
        return out

    def running_owned_by(self, owner: str, event_ids: Sequence[str]) -> list[str]:
        rows = self.sql(
            "SELECT run_id FROM runs WHERE owner = $1 AND status = 'Running' AND event_id = ANY($2::text[])",
            owner,
            list(event_ids),
        )
        return [r["run_id"] for r in rows]

    def close(self) -> None:
        async def go() -> None:
            if self._store is not None:
                await self._store.close()
            if self._pool is not None:
                await self._pool.close()

        try:
            self._call(go(), timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


@dataclass(frozen=True)
class StepLine:
    run_id: str
    step: str
    at: float
    worker: str


class StepLog:
    """What the workers' step bodies wrote (see `tests.split.app`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _lines(self, kind: str) -> list[StepLine]:
        out = []
        for path in sorted(self.directory.glob(f"{kind}-*.log")):
            worker = path.stem[len(kind) + 1 :]
            for line in complete_lines(path):
                run_id, step, at = line.split()
                out.append(StepLine(run_id, step, float(at), worker))
        return out

    def started(self) -> list[StepLine]:
        return self._lines("started")

    def finished(self) -> list[StepLine]:
        return self._lines("steps")

    def finished_count(self, run_ids: set[str] | None = None) -> int:
        return sum(1 for s in self.finished() if run_ids is None or s.run_id in run_ids)

    def ran_twice(self, run_ids: set[str]) -> dict[tuple[str, str], int]:
        """(run, step) -> bodies begun, for every step of `run_ids` whose body began more than once."""
        counts = collections.Counter((s.run_id, s.step) for s in self.started() if s.run_id in run_ids)
        return {k: n for k, n in counts.items() if n > 1}

    def describe(self, keys: Iterable[tuple[str, str]], limit: int = 20) -> str:
        """Where and when each of these (run, step) bodies began, one line each (for failures)."""
        wanted = set(list(keys)[:limit])
        starts: dict[tuple[str, str], list[StepLine]] = collections.defaultdict(list)
        for s in self.started():
            if (s.run_id, s.step) in wanted:
                starts[(s.run_id, s.step)].append(s)
        lines = []
        for (run, step), begun in sorted(starts.items()):
            where = ", ".join(f"on {s.worker} at {clock_text(s.at)}" for s in sorted(begun, key=lambda s: s.at))
            lines.append(f"  {run} {step}: began {where}")
        return "\n".join(lines)


def clock_text(at: float) -> str:
    """A unix time as the processes' log lines show it (UTC, milliseconds)."""
    return time.strftime("%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}"


class RoleProcess:
    """One `connect dev --role ROLE` process; `start` returns once it serves and is registered."""

    def __init__(self, cluster: Cluster, role: str, base: str, *, port: int | None = None) -> None:
        """`base` names the process's place (`gwa`); its process id is `base`, then `base-2`... for
        each process started in that place, so a replacement registers under a new id."""
        self.cluster = cluster
        self.role = role
        self.base = base
        self.process_id = cluster.next_id(base)
        self.port = port or free_port()
        self.gateway_port = free_port()
        self.proc: Proc | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://{self.cluster.host}:{self.port}"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.cluster.host}:{self.gateway_port}/v0/connect"

    def args(self) -> list[str]:
        c = self.cluster
        return [
            sys.executable, "-m", "connect", "dev",
            "--role", self.role,
            "--database-url", c.database_url,
            "--process-id", self.process_id,
            "--host", c.host,
            "--port", str(self.port),
            "--gateway-port", str(self.gateway_port),
            "--gateway-url", self.gateway_url,
            "--owner-lease", str(OWNER_LEASE),
            "--process-ttl", str(PROCESS_TTL),
            "--drain-timeout", str(DRAIN_TIMEOUT),
            *c.lease_flags,
        ]  # fmt: skip

    def start(self) -> RoleProcess:
        return self.launch().wait_up()

    def launch(self) -> RoleProcess:
        """Start the process without waiting for it (see `wait_up`)."""
        self.starts += 1
        log = self.cluster.dir / f"{self.role}-{self.process_id}-{self.starts}.log"
        self.proc = Proc(self.args(), _clean_env(), log)
        return self

    def wait_up(self) -> RoleProcess:
        assert self.proc is not None
        poll_until(self._up, START_TIMEOUT, f"{self.role} {self.process_id} to come up (log: {self.proc.log_path})")
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.popen.poll() is not None:
            raise AssertionError(f"{self.role} {self.process_id} exited:\n{self.proc.output()[-4000:]}")
        if self.role == "api" and http_status(f"{self.url}/health") != 200:
            return False
        if self.role == "gateway" and self.ready_status() != 200:
            return False
        return any(
            p.process_id == self.process_id and p.state == "ready" for p in self.cluster.probe.processes(self.role)
        )

    def ready_status(self) -> int | None:
        """The gateway's GET /ready status (None: it does not answer)."""
        return http_status(f"http://{self.cluster.host}:{self.gateway_port}/ready")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.popen.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.signal(sig)

    def wait(self, timeout: float) -> int:
        """The exit status, once the process has exited (at most `timeout` seconds from now)."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def terminate(self, timeout: float = DRAIN_TIMEOUT + 30) -> int:
        """SIGTERM; wait for the process to exit; its exit status."""
        assert self.proc is not None
        self.proc.signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.proc.stop()
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stop()


class Cluster:
    """1 API, gateways and executors as separate processes, and their workers.

    `host` is the address every platform process listens on and advertises
    (127.0.0.1, or the host's end of a veth pair when workers live behind a NAT).
    `lease_flags` set the step request leases of the gateways (default `LEASE_FLAGS`).
    """

    def __init__(
        self,
        directory: Path,
        database_url: str,
        *,
        host: str = "127.0.0.1",
        lease_flags: Sequence[str] = LEASE_FLAGS,
    ) -> None:
        self.dir = directory
        self.lease_flags = list(lease_flags)
        self.database_url = database_url
        self.host = host
        self.steps_dir = directory / "steps"
        self.steps_dir.mkdir(parents=True, exist_ok=True)
        self.steps = StepLog(self.steps_dir)
        self.probe = StoreProbe(database_url)
        self.api: RoleProcess | None = None
        self.gateways: list[RoleProcess] = []
        self.executors: list[RoleProcess] = []
        self.workers: dict[str, Proc] = {}
        self.stopped: list[Proc] = []
        self._generation = collections.Counter[str]()

    # --- platform ------------------------------------------------------------

    def next_id(self, base: str) -> str:
        """`base`, then `base-2`, `base-3`...: a new process id for each process started in its place."""
        self._generation[base] += 1
        n = self._generation[base]
        return base if n == 1 else f"{base}-{n}"

    def start_platform(self, gateways: int = 2, executors: int = 2) -> Cluster:
        """1 API, `gateways` gateways (gwa, gwb...) and `executors` executors (exec1, exec2...),
        started at once; returns when every one serves and is registered."""
        self.api = RoleProcess(self, "api", "api").launch()
        self.gateways = [RoleProcess(self, "gateway", f"gw{chr(ord('a') + i)}").launch() for i in range(gateways)]
        self.executors = [RoleProcess(self, "executor", f"exec{i + 1}").launch() for i in range(executors)]
        for p in [self.api, *self.gateways, *self.executors]:
            p.wait_up()
        return self

    def start_gateway(self, base: str) -> RoleProcess:
        gw = RoleProcess(self, "gateway", base).start()
        self.gateways.append(gw)
        return gw

    def start_executor(self, base: str) -> RoleProcess:
        ex = RoleProcess(self, "executor", base).start()
        self.executors.append(ex)
        return ex

    def retire(self, p: RoleProcess) -> None:
        """Forget `p` (stopped or killed) so `gateways`/`executors` hold only live processes."""
        if p in self.gateways:
            self.gateways.remove(p)
        if p in self.executors:
            self.executors.remove(p)
        if p.proc is not None:
            self.stopped.append(p.proc)

    def replace(self, old: RoleProcess) -> RoleProcess:
        """Start `old`'s successor in its place (a new process id), then SIGTERM `old`
        and expect a clean exit: a rolling deploy of one process. The API keeps its port
        (workers and clients know only its URL), so it stops before its successor starts."""
        if old.role == "api":
            self.restart_api()
            assert self.api is not None
            return self.api
        new = self.start_gateway(old.base) if old.role == "gateway" else self.start_executor(old.base)
        code = old.terminate()
        assert code == 0, f"{old.process_id} exited with {code}:\n{old.proc.output()[-3000:] if old.proc else ''}"
        self.retire(old)
        return new

    def restart_api(self) -> None:
        """SIGTERM the API and start a new process on the same port (workers know only its URL)."""
        old = self.api
        assert old is not None
        assert old.terminate() == 0, old.proc.output()[-3000:] if old.proc else ""
        self.retire(old)
        self.api = RoleProcess(self, "api", "api", port=old.port).start()

    @property
    def url(self) -> str:
        assert self.api is not None
        return self.api.url

    # --- workers -------------------------------------------------------------

    def worker_env(self, name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = _clean_env()
        env.update(
            {
                "CONNECT_API_URL": self.url,
                "WORKER_NAME": name,
                "SPLIT_LOG_DIR": str(self.steps_dir),
                "PYTHONPATH": str(ROOT),
            }
        )
        env.update(extra or {})
        return env

    def start_worker(
        self,
        name: str,
        *,
        target: str = "tests.split.app:client",
        instance_id: str | None = None,
        max_concurrency: int | None = None,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> Proc:
        """A `connect worker` process; `instance_id` defaults to `name`."""
        args = [*prefix, sys.executable, "-m", "connect", "worker", target, "--instance-id", instance_id or name]
        if max_concurrency is not None:
            args += ["--max-worker-concurrency", str(max_concurrency)]
        proc = Proc(args, self.worker_env(name, env), self.dir / f"worker-{name}.log")
        self.workers[name] = proc
        return proc

    def start_official(self, name: str = "official", prefix: Sequence[str] = ()) -> Proc:
        """The official `inngest` worker (instance id `official-worker`, app `compat-app`)."""
        args = [*prefix, sys.executable, str(ROOT / "tests" / "compat" / "official_worker.py")]
        proc = Proc(args, self.worker_env(name), self.dir / f"worker-{name}.log")
        self.workers[name] = proc
        return proc

    def wait_connected(self, instance_ids: Iterable[str], timeout: float = 60.0) -> None:
        """Until every instance has a ready connection in the registry."""
        wanted = set(instance_ids)

        def connected() -> bool:
            ready = {c.instance_id for c in self.probe.connections() if c.state == "ready"}
            return wanted <= ready

        poll_until(connected, timeout, f"instances {sorted(wanted)} to be connected")

    def stop_worker(self, name: str) -> None:
        proc = self.workers.pop(name)
        proc.stop()
        self.stopped.append(proc)

    # --- events and runs -----------------------------------------------------

    def send(self, events: list[dict[str, Any]]) -> list[str]:
        """Send in batches of 100 (one /e/ body has a size limit); the event ids in order."""
        ids: list[str] = []
        with httpx.Client(timeout=30) as http:
            for i in range(0, len(events), 100):
                resp = http.post(f"{self.url}/e/test", json=events[i : i + 100])
                resp.raise_for_status()
                ids += resp.json()["ids"]
        return ids

    def send_five(self, count: int, delay: float = 0.0) -> list[str]:
        return self.send([{"name": "split/five", "data": {"delay": delay}} for _ in range(count)])

    def wait_finished(self, event_ids: Sequence[str], timeout: float) -> None:
        """Until every event has a run and none is Running (watched through the store)."""

        def finished() -> bool:
            statuses = self.probe.statuses(event_ids)
            return len(statuses) == len(event_ids) and all("Running" not in s for s in statuses.values())

        try:
            poll_until(finished, timeout, f"{len(event_ids)} runs to finish")
        except AssertionError:
            statuses = self.probe.statuses(event_ids)
            left = collections.Counter(s for v in statuses.values() for s in v)
            raise AssertionError(
                f"runs not finished after {timeout}s: {len(event_ids) - len(statuses)} events without a run, "
                f"statuses {dict(left)}"
            ) from None

    def runs(self, event_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Every run of every event, through the API (GET /v1/events/{id}/runs)."""
        out: list[dict[str, Any]] = []
        with httpx.Client(base_url=self.url, timeout=30) as http:
            for eid in event_ids:
                resp = http.get(f"/v1/events/{eid}/runs")
                resp.raise_for_status()
                data = resp.json()["data"]
                assert len(data) == 1, f"event {eid} has {len(data)} runs: {data}"
                out += data
        return out

    def finished_steps(self, event_ids: Sequence[str]) -> int:
        """Step bodies of these events' runs that ended (counted on the workers' side)."""
        run_ids = {r["run_id"] for r in self.sql_runs(event_ids)}
        return self.steps.finished_count(run_ids)

    def sql_runs(self, event_ids: Sequence[str]) -> list[dict[str, Any]]:
        rows = self.probe.sql("SELECT run_id, status FROM runs WHERE event_id = ANY($1::text[])", list(event_ids))
        return [dict(r) for r in rows]

    def wait_steps(self, event_ids: Callable[[], Sequence[str]], at_least: int, timeout: float = 120.0) -> None:
        """Until the runs of `event_ids()` (asked anew each time: a `Feeder` adds to them) have
        `at_least` step bodies ended."""
        poll_until(lambda: self.finished_steps(event_ids()) >= at_least, timeout, f"{at_least} steps to finish")

    # --- teardown and reports ------------------------------------------------

    def logs(self, tail: int = 4000) -> str:
        """The end of every process's log, for a failure report."""
        parts = []
        for path in sorted(self.dir.glob("*.log")):
            text = path.read_text(errors="replace")
            parts.append(f"----- {path.name} ({len(text)} bytes, last {tail}) -----\n{text[-tail:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM the workers, then the platform, each group at once; SIGKILL what outlives
        its deadline."""
        _stop_all(list(self.workers.values()), 15)
        platform = [*self.executors, *self.gateways, *([self.api] if self.api else [])]
        _stop_all([p.proc for p in platform if p.proc is not None], DRAIN_TIMEOUT + 10)
        _stop_all(self.stopped, 5)
        self.probe.close()


def _stop_all(procs: list[Proc], timeout: float) -> None:
    for proc in procs:
        proc.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.signal(signal.SIGKILL)
            proc.wait(10)
        proc.stop()  # closes its log


def assert_all_completed(cluster: Cluster, event_ids: Sequence[str]) -> list[dict[str, Any]]:
    """One run per event, every one Completed; the runs."""
    runs = cluster.runs(event_ids)
    statuses = collections.Counter(r["status"] for r in runs)
    assert statuses == {"Completed": len(event_ids)}, f"run statuses: {dict(statuses)}"
    return runs


class Feeder:
    """Load that goes on while a test stops and starts processes: `per_tick` five-step
    events every `interval` seconds from a thread, until `stop`. A send the API does not
    answer (it is restarting) is tried again at the next tick; only the ids it answered
    with count, so an event is lost only if the platform accepted it and never ran it."""

    def __init__(self, cluster: Cluster, *, per_tick: int = 5, interval: float = 0.25, delay: float = 0.05) -> None:
        self.cluster = cluster
        self.per_tick = per_tick
        self.interval = interval
        self.delay = delay
        self.ids: list[str] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        events = [{"name": "split/five", "data": {"delay": self.delay}}] * self.per_tick
        with httpx.Client(timeout=10) as http:
            while not self._stop.wait(self.interval):
                try:
                    resp = http.post(f"{self.cluster.url}/e/test", json=events)
                    resp.raise_for_status()
                    self.ids += resp.json()["ids"]
                except httpx.HTTPError:
                    self.refused += 1

    def stop(self) -> list[str]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        return self.ids
