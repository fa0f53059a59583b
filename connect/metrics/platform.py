"""The metrics of the platform's roles (API, executor, gateway) in one process.

`PlatformMetrics` owns the process's registry. The API counts events in and
replies delivered by `/v0/connect/flush` (and HTTP answers, `connect.metrics.http`);
the executor counts runs and times steps (`RunMetrics`); the gateway's state
is read when scraped (`connect.metrics.gateway`).

Labels are bounded: a function id (bounded by the apps registered), a status
or reason from a fixed set, a route template, a worker instance id (bounded
by the fleet). Never a run id, an event id or a raw path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from connect.metrics.gateway import GatewayCollector
from connect.metrics.http_answers import answers_counter
from connect.metrics.request_queue import QueueSource, RequestQueueGauges

if TYPE_CHECKING:
    from connect.gateway.server import GatewayServer
    from connect.store.base import NewEvent
    from connect.store.start_gates import StartGate

#: Buckets of the step duration and queue wait histograms, in seconds: from a
#: few milliseconds (a step on a warm worker) to minutes (long steps, long waits).
SECONDS_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)

#: `status` values of `connect_runs_finished_total`, by stored run status.
FINISHED_STATUS: Final = {"Completed": "completed", "Failed": "failed", "Cancelled": "cancelled"}

#: What a request waited for before it was dispatched (`connect_queue_depth`'s label).
WAITING_FOR_WORKER: Final = "worker"
WAITING_FOR_SLOT: Final = "slot"


#: `connect.store.start_gates.SKIPPED` (not imported: the store imports much).
_SKIPPED: Final = "Skipped"


def skip_reason(gate: StartGate | None) -> str:
    """The bounded `reason` label of a run `gate` refused: the kind of limit
    (a singleton in skip mode is checked first, then the rate limit)."""
    if gate is None:
        return "unknown"
    if gate.singleton is not None and gate.singleton.mode == "skip":
        return "singleton"
    if gate.rate_limit is not None:
        return "idempotency" if gate.rate_limit.idempotency else "rate_limit"
    return "unknown"


class RunMetrics:
    """Runs and steps, counted by the executor (and by an API process that
    records runs for executors elsewhere).

    Per step: one histogram observation, no await; the labelled child of
    each function is looked up once and kept."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter(
            "connect_runs_started",
            "Runs started (recorded, past their flow-control gate)",
            ["function"],
            registry=registry,
        )
        self.finished = Counter(
            "connect_runs_finished",
            "Runs that ended, by status: completed, failed or cancelled",
            ["function", "status"],
            registry=registry,
        )
        self.skipped = Counter(
            "connect_runs_skipped",
            "Runs an event would have started, refused by a gate: singleton, rate_limit or idempotency",
            ["function", "reason"],
            registry=registry,
        )
        self.step_duration = Histogram(
            "connect_step_duration_seconds",
            "Step requests, from dispatch to a worker until the reply is stored with the run",
            ["function"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "connect_queue_depth",
            "Step requests waiting to be dispatched, for a worker (none connected or all at capacity) or a "
            "concurrency slot",
            ["waiting_for"],
            registry=registry,
        )
        self.queue_wait = Histogram(
            "connect_queue_wait_seconds",
            "How long step requests that found no worker or no concurrency slot at once waited until dispatched",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        for waiting_for in (WAITING_FOR_WORKER, WAITING_FOR_SLOT):
            self.queue_depth.labels(waiting_for)
        self._steps: dict[str, Histogram] = {}

    def recorded(self, new: NewEvent, *, count_started: bool = True) -> None:
        """An event was stored with the runs it starts (`new`, as the store
        reported its gates' decisions on it): count the skipped, and the
        started unless `count_started` is False (runs recorded owned by
        nobody: the executor that first claims one counts it)."""
        for hold in new.holds:  # events a debounce's rate limit or idempotency kept out
            if hold.admit is not None and hold.admit.run_id in new.refused_holds:
                self.skipped.labels(hold.function_id, skip_reason(hold.admit)).inc()
        if not new.gates:
            if count_started:
                for run in new.runs:
                    self.started.labels(run.function_id).inc()
            return
        gates = {gate.run_id: gate for gate in new.gates}
        for run in new.runs:
            if run.status == _SKIPPED:
                self.skipped.labels(run.function_id, skip_reason(gates.get(run.run_id))).inc()
            elif count_started:
                self.started.labels(run.function_id).inc()

    def run_started(self, function_id: str) -> None:
        self.started.labels(function_id).inc()

    def run_finished(self, function_id: str, status: str) -> None:
        self.finished.labels(function_id, FINISHED_STATUS.get(status, status.lower())).inc()

    def run_skipped(self, function_id: str, reason: str) -> None:
        self.skipped.labels(function_id, reason).inc()

    def waiting(self, waiting_for: str, change: int) -> None:
        """A request began (+1) or stopped (-1) waiting for `waiting_for`."""
        self.queue_depth.labels(waiting_for).inc(change)

    def step_done(self, function_id: str, seconds: float) -> None:
        child = self._steps.get(function_id)
        if child is None:
            child = self._steps[function_id] = self.step_duration.labels(function_id)
        child.observe(seconds)


class PlatformMetrics:
    """The registry of one platform process and the metrics its roles update.

    `connect dev` serves it on both its ports; under `connect serve` each
    process serves its own (sum them in Prometheus)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.runs = RunMetrics(self.registry)
        self.events_received = Counter(
            "connect_events_received", "Events accepted by POST /e/{key}", registry=self.registry
        )
        self.flushed_replies = Counter(
            "connect_flush_replies",
            "Replies workers delivered over POST /v0/connect/flush (their connection was gone)",
            registry=self.registry,
        )
        self.http_responses = answers_counter(self.registry)
        self._gateways: set[int] = set()
        self._request_queue: RequestQueueGauges | None = None
        #: Read before each scrape (`scrape`): states kept in the store.
        self._refreshers: list[Callable[[], Awaitable[None]]] = []

    async def scrape(self) -> bytes:
        """The metrics in the text exposition format, once what is read from
        the store at scrape time (the request queue of a gateway process) is read.
        Every `/metrics` route of the process answers this."""
        for refresh in self._refreshers:
            await refresh()
        return generate_latest(self.registry)

    def watch_request_queue(self, store: QueueSource) -> None:
        """Serve the store's request queue (`connect.metrics.request_queue`), read at
        scrape time; a gateway process of split roles does (once per process)."""
        if self._request_queue is None:
            self._request_queue = RequestQueueGauges(self.registry, store)
            self._refreshers.append(self._request_queue.refresh)

    def watch_gateway(self, server: GatewayServer) -> None:
        """Serve `server`'s `connect_gateway_*` metrics (once per server)."""
        if id(server) in self._gateways:
            return
        self._gateways.add(id(server))
        self.registry.register(GatewayCollector(server))
