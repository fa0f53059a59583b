"""The persistence interface shared by every store backend, and its records.

Two callers use a store, each through its own Protocol:

* the gateway (`ReplyStore`) keeps step replies and request leases. Its
  contract is durability: an awaited `put_reply` has returned only once the
  reply is stored, so a worker is ACKed only for replies that survive a
  crash, and the first reply stored for a request wins.
* the executor (`Store`, a superset) keeps events, the app registry, runs
  and their step memos. `save_run` writes a run's whole new state, its new
  memos and the removal of the reply it consumed in one atomic operation, so
  one step costs one store round-trip.

Records are plain msgspec structs with no backend types in them. JSON values
the store never needs to look into (memos, run output, event payloads) travel
as the raw JSON bytes, so they are not decoded and encoded again on every step.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import msgspec

from connect.store.start_gates import SkippedStart, StartGate, skipped_invoke_memo
from protocol.payloads import FunctionConfig

# Run statuses, exactly as the REST API shows them.
RUNNING: Final = "Running"
COMPLETED: Final = "Completed"
FAILED: Final = "Failed"
CANCELLED: Final = "Cancelled"

#: The `step_id` of a discovery request (no particular step targeted).
DISCOVERY: Final = "step"

# `Waiting.kind` values.
WAIT_SLEEP: Final = "sleep"
WAIT_EVENT: Final = "wait"
WAIT_INVOKE: Final = "invoke"


class StoreClosed(RuntimeError):
    """The store was closed; no further operations are accepted."""


class RunOwnershipLost(RuntimeError):
    """A run's state was written with a fencing token that is no longer its
    own: another executor has claimed the run since. Nothing of the write was
    stored; the writer must let the run go."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} is owned by another executor now; the write was refused")
        self.run_id = run_id


#: The fencing token of a run its starting executor owns from the start.
NEW_RUN_FENCE: Final = 1

#: The notification channel on which `release_runs` announces runs anyone may claim
#: (payload: the owner that released them).
RUNS_RELEASED: Final = "connect_runs_released"
#: Announces a request queued for any gateway (payload: its function slug).
REQUEST_QUEUED: Final = "connect_request_queued"
#: Announces queued requests answered (their replies are stored) or lapsed (payload:
#: their ids joined by ","; `settle_request` sends one, `put_reply` those of a batch
#: it does not announce on `REQUEST_ANSWERED`).
REQUEST_SETTLED: Final = "connect_request_settled"
#: Announces queued requests answered, with their replies, so that the executor
#: waiting for one need not read it back (payload: `answer_entries`, "<request
#: id>:<reply, base64>" joined by ","). Sent by `put_reply` for the requests it took
#: out of the queue and stored the reply of, when the entry fits `ANSWER_ENTRY_MAX`.
REQUEST_ANSWERED: Final = "connect_request_answered"
#: Announces an app registered or changed (payload: the app name); sent by `put_app`.
APPS_CHANGED: Final = "connect_apps_changed"
#: Announces events newly stored by `record_events` or `record_tick` (payload: their
#: ids joined by ","; a long list is split over several notifications).
EVENTS_RECORDED: Final = "connect_events_recorded"
#: Announces a run newly flagged for cancellation by `request_cancel` (payload: the run id).
RUN_CANCEL_REQUESTED: Final = "connect_run_cancel"
#: Announces a reply stored (payload: its request id). The store never sends it on
#: its own (`put_reply` stays on the hot path): callers send it with `notify`.
REPLY_STORED: Final = "connect_reply_stored"
#: Announces a process registered, changing state or gone (payload: its process id);
#: sent by `put_process` when the state changed and by `drop_process`.
PROCESSES_CHANGED: Final = "connect_processes_changed"

#: Announces held starts (debounces, batches) written or pushed back (payload: the
#: earliest `due_ms` among those written, as decimal text); sent by `record_events`
#: and `save_run` when an event was held.
HELD_STARTS_CHANGED: Final = "connect_held_starts_changed"

#: Announces concurrency slots granted to requests that were waiting for them
#: (payload: their request ids joined by ","; a long list is split over several
#: notifications). Sent by `release_slots` and `release_run_slots`.
SLOTS_GRANTED: Final = "connect_slots_granted"

#: Announces a throttle turn given to a run waiting for a later one (payload: the
#: run id); sent by `take_throttle_turn`.
THROTTLE_TURN_GRANTED: Final = "connect_throttle_turn"

#: The largest payload of one `EVENTS_RECORDED` notification, in bytes
#: (PostgreSQL refuses payloads of 8000 bytes or more).
EVENTS_PAYLOAD_MAX: Final = 7000

#: The largest `REQUEST_ANSWERED` entry, in bytes: a longer reply is announced by
#: id alone (`REQUEST_SETTLED`) and read back from the store.
ANSWER_ENTRY_MAX: Final = 6000

#: How long an expired registry entry may linger (ms): each `put_process` /
#: `put_connections` deletes the entries that expired this long before the expiry
#: of the entry it writes. The margin keeps an entry written with a clock behind
#: the writer's from being deleted while it may still count as live.
REGISTRY_KEEP_MS: Final = 3_600_000

# Process roles in the registry (`ProcessRecord.role`).
ROLE_API: Final = "api"
ROLE_GATEWAY: Final = "gateway"
ROLE_EXECUTOR: Final = "executor"

# Registry states of processes and connections.
READY: Final = "ready"
DRAINING: Final = "draining"

# How a gateway ends its hold on a queued request (`settle_request`).
#: The reply is stored: the request leaves the queue.
ANSWERED: Final = "answered"
#: Not served here after all (no worker, all at capacity): queued again for any gateway.
RETURNED: Final = "returned"
#: Its worker was lost before it answered: the executor decides what follows.
LAPSED: Final = "lapsed"


@dataclass(frozen=True)
class ProcessRecord:
    """A live process of some role, as it registered itself.

    `address` is what others reach it at: for a gateway the ws:// URL
    workers dial, for an API its http URL, for an executor "". The entry
    lapses at `expires_at_ms` (Unix ms) unless the process renews it.
    """

    process_id: str
    role: str  # ROLE_API / ROLE_GATEWAY / ROLE_EXECUTOR
    address: str
    state: str  # READY / DRAINING
    expires_at_ms: int
    started_at_ms: int


@dataclass(frozen=True)
class ConnectionRecord:
    """A worker connection a gateway holds, as that gateway last reported it.

    `functions` are function slugs; `capacity` is the worker's
    `max_worker_concurrency` (None: unlimited) and `in_flight` the requests
    it was running. The entry lapses at `expires_at_ms` (Unix ms) unless the
    gateway reports it again.
    """

    connection_id: str
    gateway_id: str
    instance_id: str
    apps: list[str]
    functions: list[str]
    capacity: int | None
    in_flight: int
    state: str  # READY / DRAINING, ...
    last_heartbeat_ms: int
    expires_at_ms: int


def chunk_ids(ids: Sequence[str], limit: int = EVENTS_PAYLOAD_MAX) -> list[str]:
    """Join `ids` with "," into as few payloads as keep each within `limit` bytes
    (an id longer than `limit` on its own gets a payload of its own)."""
    payloads: list[str] = []
    current: list[str] = []
    size = 0
    for event_id in ids:
        n = len(event_id.encode())
        if current and size + 1 + n > limit:
            payloads.append(",".join(current))
            current, size = [], 0
        size += n + (1 if current else 0)
        current.append(event_id)
    if current:
        payloads.append(",".join(current))
    return payloads


def answer_entries(answers: Sequence[tuple[str, bytes]]) -> tuple[list[str], list[str]]:
    """The `REQUEST_ANSWERED` payloads for (request id, stored reply) pairs, and the
    ids whose entries do not fit `ANSWER_ENTRY_MAX` (to announce on `REQUEST_SETTLED`)."""
    entries: list[str] = []
    too_long: list[str] = []
    for request_id, data in answers:
        entry = f"{request_id}:{base64.b64encode(data).decode()}"
        (entries.append(entry) if len(entry) <= ANSWER_ENTRY_MAX else too_long.append(request_id))
    return chunk_ids(entries), too_long


def read_answers(payload: str) -> Iterator[tuple[str, str]]:
    """The (request id, reply in base64) pairs of a `REQUEST_ANSWERED` payload."""
    for entry in payload.split(","):
        request_id, _, data = entry.partition(":")
        yield request_id, data


class Claim(msgspec.Struct, frozen=True):
    """A Running run an executor now owns, with the fencing token its writes must carry."""

    run_id: str
    fence: int


class LeaseRecord(msgspec.Struct, frozen=True):
    """Who holds a step request and until when (Unix milliseconds)."""

    request_id: str
    lease_id: str
    expires_at_ms: int
    instance_id: str


class EventRecord(msgspec.Struct, frozen=True):
    """A received event. `body` is the JSON of the `protocol.payloads.Event`."""

    id: str
    name: str
    ts: int
    received_at_ms: int
    body: bytes


class AppRecord(msgspec.Struct, frozen=True):
    """The functions an app registered when its worker last connected."""

    app_name: str
    functions: list[FunctionConfig]
    app_version: str | None = None
    updated_at_ms: int = 0


# `StepInfo.kind` values: a step a worker ran, one that sent events, and those of `Waiting.kind`.
STEP_RUN: Final = "run"
STEP_SEND_EVENT: Final = "send_event"


class StepInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    """What the run's timeline shows of a step, stored with its result.

    `name` is the step's id as its author wrote it (the opcode's
    `displayName`); `kind` is `STEP_RUN`, `STEP_SEND_EVENT` or a
    `Waiting.kind`; `attempts` the attempts it took (a step a worker ran);
    `started_ms` when its last attempt began, or when it began waiting;
    `ended_ms` when its result came; `due_ms` when a sleep was due, or a
    wait or an invoke would time out (see `connect.executor.step_infos`).
    `ended_by` is set on a sleep, wait or invoke its run's end cut short
    (`cancelled`, `run_ended`), whose stored result is then `null`. 0 and
    "" are unknown."""

    name: str = ""
    kind: str = STEP_RUN
    attempts: int = 0
    started_ms: int = 0
    ended_ms: int = 0
    due_ms: int = 0
    ended_by: str = ""


class StepMemo(msgspec.Struct, frozen=True):
    """A stored step result: the JSON `{"data": ...}`, `{"error": ...}` or `null`.

    `info` is stored in the same row (no statement of its own); only
    `Store.run_steps` reads it back, resuming a run needs none of it."""

    step_hash: str
    result: bytes
    info: StepInfo | None = None


class PendingRequest(msgspec.Struct, frozen=True):
    """A call request the run has yet to get a reply for.

    Its id is stored before it is dispatched, so after a restart the same id
    is dispatched again and the dispatcher answers with the reply stored
    before the crash (or waits on the worker still holding a lease on it).
    `step_id` is `DISCOVERY` or the hashed id of the one step it targets;
    `wake_at_ms` > 0 delays the dispatch (a retry backoff); `lapses` counts
    the workers lost while running it (leases that lapsed), which spend no
    attempt but are bounded on their own.
    """

    request_id: str
    step_id: str = DISCOVERY
    attempt: int = 0
    wake_at_ms: int = 0
    lapses: int = 0


class Waiting(msgspec.Struct, frozen=True, omit_defaults=True):
    """A step the executor completes without a worker: a sleep, a wait or an invoke.

    It is done once a memo is stored under `step` (the memo table is the
    truth; this entry only says what to watch for). `due_ms` is when a
    sleep ends, or when a wait or an invoke gives up (`null` / a timeout
    error). A wait matches events named `event` for which the CEL
    `expression` holds; an invoke waits for the `inngest/function.finished`
    event carrying `correlation_id`.
    """

    kind: str  # WAIT_SLEEP / WAIT_EVENT / WAIT_INVOKE
    step: str
    due_ms: int
    event: str = ""
    expression: str | None = None
    correlation_id: str = ""
    #: The step's name as its author wrote it, and when it began (for its `StepInfo`).
    name: str = ""
    since_ms: int = 0


class RunRecord(msgspec.Struct):
    """Everything needed to resume a run after a restart, apart from its memos.

    While the run is `Running`, `requests` are the call requests it waits on
    (one in the common sequential case; one per planned step while a
    parallel group runs) and `waiting` the steps that complete without a
    worker. When both are empty the next request is a discovery.
    `cancel_requested` is written only by `request_cancel`, never by
    `save_run`, so a cancellation is not lost to a concurrent save.
    `output` is raw JSON: the function's return value when Completed, the
    error object when Failed.
    """

    run_id: str
    function_id: str
    app_name: str
    event_id: str
    started_at_ms: int
    status: str = RUNNING
    max_attempts: int = 5
    requests: list[PendingRequest] = msgspec.field(default_factory=list)
    waiting: list[Waiting] = msgspec.field(default_factory=list)
    disable_immediate_execution: bool = False
    request_version: int = -1
    cancel_requested: bool = False
    output: bytes | None = None
    ended_at_ms: int | None = None


class RunFilter(msgspec.Struct, frozen=True):
    """Which runs `Store.list_runs` (and starts `Store.list_skipped`) lists.

    Every condition given must hold: `status` exactly, `function_id`
    exactly, a start at or after `started_from_ms` and before
    `started_before_ms` (Unix ms). `older_than` is where the previous page
    ended, the (start, run id) of its last run: only runs that sort after it
    newest first are listed, so a page never repeats or skips a run however
    many start meanwhile. At most `limit` runs are listed."""

    status: str | None = None
    function_id: str | None = None
    started_from_ms: int | None = None
    started_before_ms: int | None = None
    older_than: tuple[int, str] | None = None
    limit: int = 50


class SlotClaim(msgspec.Struct, frozen=True):
    """One concurrency limit a request must fit in: at most `limit` requests
    hold a slot of `key` at once. `key` is the evaluated key, scope included
    (see `connect.executor.concurrency`); two functions sharing a key each
    block at their own `limit`."""

    key: str
    limit: int


class SlotAcquire(msgspec.Struct, frozen=True):
    """A request to hold slots, as `Store.acquire_slots` takes one, made by a
    save (`SlotChange.acquire`)."""

    request_id: str
    claims: list[SlotClaim]
    order: int


@dataclass(slots=True)
class SlotChange:
    """Concurrency slots changed by a run's save, in its transaction
    (`Store.save_run(slots=...)`), instead of in transactions of their own.

    The releases come first, then the acquires, then the grants the releases
    make possible: a request of the run that follows the one released takes
    the freed slot when no one ordered before it waits, as the order of
    `acquire_slots` says, and a waiter ordered before it is granted it instead."""

    #: Requests whose slots and waits go (`release_slots`).
    release: list[str] = field(default_factory=list)
    #: Every slot and wait of the run goes (`release_run_slots`): it ended.
    release_run: bool = False
    #: Requests of the run to hold slots or wait in line, in this order (`acquire_slots`).
    acquire: list[SlotAcquire] = field(default_factory=list)
    #: Set by the save (read it once the save returned): the requests of
    #: `acquire` that hold their slots (the others wait in line, and learn of
    #: their grant as `acquire_slots` waiters do).
    held: list[str] = field(default_factory=list)


class QueuedRequest(msgspec.Struct, frozen=True):
    """A step request an executor queued for whichever gateway serves its function.

    Used when the executor and the gateways are separate processes: the
    executor queues it, a gateway with a worker for `function_slug` takes it
    and forwards it, stores the worker's reply like any other, and settles it;
    the executor, told of the settlement, reads the reply."""

    request_id: str
    run_id: str
    app_name: str
    function_slug: str
    step_id: str
    payload: bytes
    queued_at_ms: int
    #: Queued: the executor never dispatched this request id before
    #: (`StepRequest.fresh`). Taken: that, and no gateway took it before, so
    #: no reply or lease of it can be stored and the gateway need not look.
    #: False is always safe (it only costs those looks).
    fresh: bool = False


class RequestQueueStats(msgspec.Struct, frozen=True):
    """The queue of step requests for gateways (`queued_requests`), read at one
    instant by `Store.request_queue_stats` over at most `limit` of its rows."""

    #: Requests a gateway may take now: not held (or their hold ran out), not lapsed.
    waiting: int
    #: Requests a gateway holds: it is forwarding them.
    held: int
    #: Requests whose worker was lost, until their executor queues them again.
    lapsed: int
    #: When the oldest waiting request was queued (Unix ms), None when none waits.
    oldest_waiting_ms: int | None
    #: The rows read reached the limit: the counts are at least these.
    truncated: bool


class TakenRequest(msgspec.Struct, frozen=True):
    """What a gateway finds of a request it took, read at one instant (`Store.taken_request`)."""

    #: The reply stored for it, if one is.
    reply: bytes | None
    #: Whether the gateway still holds it in the queue.
    held: bool
    #: Whether a lease of it lives (a worker may be running it).
    leased: bool


class RunMemo(msgspec.Struct, frozen=True):
    """A memo for some run, stored together with the event that produced it
    (the event a wait matched, or the `function.finished` an invoke waited for)."""

    run_id: str
    memo: StepMemo


class LoadedRun(msgspec.Struct, frozen=True):
    """A run with what resuming it needs: its triggering event and its memos,
    and for a run a batch started, the bodies of all its events in order
    (`batch`, the trigger first; empty for any other run)."""

    run: RunRecord
    event: EventRecord | None
    memos: list[StepMemo]
    batch: list[bytes] = msgspec.field(default_factory=list)


# `Hold.kind` values (see `connect.store.held_starts`).
DEBOUNCE: Final = "debounce"
BATCH: Final = "batch"


class Hold(msgspec.Struct, frozen=True):
    """What holding one event for one function means: the kind, the key its
    held start is filed under, what a run of the function needs, and the rule.

    `period_ms` and `timeout_ms` (None: no cap) are the debounce's;
    `max_size` and `timeout_ms` the batch's."""

    kind: str  # DEBOUNCE / BATCH
    function_id: str
    app_name: str
    key: str
    max_attempts: int
    period_ms: int = 0
    timeout_ms: int | None = None
    max_size: int = 0
    #: What the event must pass before it is held (a debounce's rate limit or
    #: idempotency, keyed on this event); refused, it is recorded as a skip
    #: under `admit.run_id` and held nowhere.
    admit: StartGate | None = None
    #: What the run the held start fires must pass when it starts (throttle,
    #: singleton), keyed on the event the run starts with: kept with the held
    #: start (a debounce's last event, a batch's first).
    gate: StartGate | None = None


class HeldStart(msgspec.Struct):
    """One pending debounce or batch as stored.

    `event_id` names the event the run will be started for (a debounce's
    last, a batch's first); `size` is how many events it holds (a debounce
    one) and `size_bytes` their JSON's length: the events themselves are
    stored apart, one row each, so adding one writes that row alone;
    `last_ts` is the newest `ts` a debounce kept; `opened_ms` is when the
    first event arrived and `due_ms` when the run starts unless a batch
    fills first. `gate` is the encoded `StartGate` the run passes when it
    fires (`Hold.gate` of the event it starts with; None: none)."""

    kind: str
    function_id: str
    key: str
    app_name: str
    max_attempts: int
    event_id: str
    last_ts: int
    opened_ms: int
    due_ms: int
    size: int
    size_bytes: int
    gate: bytes | None = None


#: `EventHold.status` values: still held, its run started, or left behind
#: (a debounce kept a later event, or one with a later `ts`, instead).
HOLD_HELD: Final = "held"
HOLD_STARTED: Final = "started"
HOLD_REPLACED: Final = "replaced"


class EventHold(msgspec.Struct, frozen=True):
    """What became of an event a function's debounce or batch held
    (`Store.event_holds`): `kind` (`DEBOUNCE` / `BATCH`) and `key` of the
    held start it went to, when (`at_ms`), and its `status`: `HOLD_HELD`
    until `due_ms` (or until a batch fills), `HOLD_STARTED` with `run_id`
    (the run it started, or the skip record of the run a gate refused),
    or `HOLD_REPLACED`."""

    function_id: str
    kind: str
    key: str
    at_ms: int
    status: str
    run_id: str | None = None
    due_ms: int | None = None


class NewEvent(msgspec.Struct, frozen=True):
    """An event to record with what it causes, all or nothing.

    `runs` are the runs it starts, `memos` the waits it resolves and
    `cancels` the Running runs it cancels. If the event id is already
    stored (a duplicate send), none of them is written. The runs it starts
    are owned by `owner` with fencing token `NEW_RUN_FENCE`, or by nobody
    (token 0) until an executor claims them.

    `gates` are the flow-control gates some of the runs must pass (throttle,
    rate limit, idempotency, singleton; see `connect.store.start_gates`),
    at most one per run, decided in the transaction that records the event,
    with the run's `started_at_ms` as the time of the decision. The store
    reports each decision on the run objects themselves: a run refused gets
    `status` `SKIPPED` and is stored as a `SkippedStart`, not as a run; a
    throttled run gets its first request's `wake_at_ms` set to its turn (and
    joins its key's line when the throttle has an `order`, see
    `take_throttle_turn`); a
    run a singleton cancels is added to `cancels` (and flagged, as
    `request_cancel` does, announcing it on `RUN_CANCEL_REQUESTED`); a run
    refused whose gate names the `step.invoke` step waiting for it
    (`StartGate.invoked_by`) gives that step an error memo, stored (first
    stored wins) and added to `memos` (see `tell_invoker`). Runs without a
    gate cost nothing more.

    `holds` are the debounced and batched functions it goes to instead of
    starting a run (see `connect.store.held_starts`): each is applied to the
    held start of its (function, key) in the same transaction. A batch the
    event fills starts its run there and then, owned by nobody (announced on
    `RUNS_RELEASED`, so an executor claims it at once).

    `slots` are the concurrency slots the first requests of some runs take
    (runs of functions with limits), as (run id, what the request claims):
    each is acquired after the runs are stored, in the same transaction, as
    `acquire_slots` would, unless its run's gate skipped it or delayed its
    start (`starting_slots`). The store puts in `held` the requests that
    hold their slots; the others wait in line.
    """

    event: EventRecord
    runs: list[RunRecord]
    memos: list[RunMemo] = msgspec.field(default_factory=list)
    cancels: list[str] = msgspec.field(default_factory=list)
    owner: str | None = None
    gates: list[StartGate] = msgspec.field(default_factory=list)
    holds: list[Hold] = msgspec.field(default_factory=list)
    slots: list[tuple[str, SlotAcquire]] = msgspec.field(default_factory=list)
    held: list[str] = msgspec.field(default_factory=list)
    #: The cancels of `cancels` the gates added, by the run whose singleton
    #: added it (so a transaction applied again takes them out first).
    gated_cancels: dict[str, str] = msgspec.field(default_factory=dict)
    #: Filled by the store: the `Hold.admit` run ids of the holds it refused
    #: (the event was over a debounce's rate limit or idempotency).
    refused_holds: list[str] = msgspec.field(default_factory=list)

    def tell_invoker(self, gate: StartGate, skip: SkippedStart | None) -> RunMemo | None:
        """For a store that decided `gate`: when it refused its run (`skip`),
        the memo of the `step.invoke` step waiting for the run, if any, put in
        `memos` for the store to write in the same transaction. Whatever an
        earlier attempt of the transaction decided is replaced, so an
        operation applied again reports only its last decision."""
        if gate.invoked_by is None:
            return None
        target = (gate.invoked_by.run_id, gate.invoked_by.step)
        self.memos[:] = [m for m in self.memos if (m.run_id, m.memo.step_hash) != target]
        if skip is None:
            return None
        memo = RunMemo(gate.invoked_by.run_id, StepMemo(gate.invoked_by.step, skipped_invoke_memo(skip)))
        self.memos.append(memo)
        return memo


def starting_slots(new: NewEvent) -> list[tuple[str, SlotAcquire]]:
    """The `slots` of `new` to acquire once its gates decided: those of runs
    that start now (not skipped, and not throttled to a later turn: such a
    request asks for its slots when its turn comes)."""
    runs = {r.run_id: r for r in new.runs}
    due: list[tuple[str, SlotAcquire]] = []
    for run_id, item in new.slots:
        run = runs.get(run_id)
        if run is not None and run.status == RUNNING and all(r.wake_at_ms <= run.started_at_ms for r in run.requests):
            due.append((run_id, item))
    return due


#: Where a scan of events by age stopped: (received_at_ms, id) of the last one examined.
EventsCursor = tuple[int, str]


class Pruned(msgspec.Struct, frozen=True):
    """What one `prune_history` batch deleted, by kind of row, and where its
    scan of old events stopped (None: it reached the cutoff)."""

    runs: int = 0
    steps: int = 0
    events: int = 0
    replies: int = 0
    leases: int = 0
    events_cursor: EventsCursor | None = None
    singletons: int = 0

    def reached(self, limit: int) -> bool:
        """Whether a bounded kind hit `limit` or the event scan stopped short,
        so another batch may find more to delete."""
        return self.events_cursor is not None or max(self.runs, self.replies, self.leases, self.singletons) >= limit

    def __add__(self, other: Pruned) -> Pruned:
        """Totals of two batches, the second's cursor."""
        return Pruned(
            self.runs + other.runs,
            self.steps + other.steps,
            self.events + other.events,
            self.replies + other.replies,
            self.leases + other.leases,
            other.events_cursor,
            self.singletons + other.singletons,
        )


class ReplyStore(Protocol):
    """What the gateway needs: step replies and request leases.

    Every awaited write has been durably committed when it returns (with the
    backend's own notion of durable: for SQLite, the WAL survives a killed
    process). Writes from concurrent callers may share one commit.
    """

    def put_reply(self, request_id: str, data: bytes) -> Awaitable[bool]:
        """Store a reply unless one is stored already; True if this call stored it.
        Storing a reply also ends the request's stored lease, and answers the
        request if it is queued (`queue_request`): it leaves the queue, and
        `REQUEST_SETTLED` announces it once committed. Queued at the call, like
        `put_lease`; await the result to know it committed."""
        ...

    async def get_reply(self, request_id: str) -> bytes | None: ...

    def put_lease(self, request_id: str, lease_id: str, expires_at_ms: int, instance_id: str) -> Awaitable[None]:
        """Create or replace the lease on `request_id`. Queued at the call, in
        order with every other write; await the result to know it committed."""
        ...

    async def get_lease(self, request_id: str) -> LeaseRecord | None: ...

    def delete_lease(self, request_id: str) -> Awaitable[None]:
        """Remove the lease on `request_id`; queued at the call like `put_lease`."""
        ...

    async def prune_replies(self, stored_before_ms: int) -> int:
        """Delete replies stored before the given time; returns how many.

        Replies are normally removed when the executor consumes them; this
        clears late duplicates for requests the executor has moved past.
        """
        ...

    async def close(self) -> None:
        """Finish queued work and release the backend; later calls raise StoreClosed."""
        ...


class Store(ReplyStore, Protocol):
    """Everything persisted: the gateway's replies and leases, and the
    executor's apps, events, runs and memos (same durability contract)."""

    # --- executor: apps ------------------------------------------------------

    async def put_app(self, app: AppRecord) -> None:
        """Create or replace the registration of `app.app_name` (notifying `APPS_CHANGED`)."""
        ...

    async def list_apps(self) -> list[AppRecord]: ...

    # --- executor: events and runs ------------------------------------------

    async def record_events(self, events: list[NewEvent]) -> list[bool]:
        """Store events and what each causes (see `NewEvent`), all in one transaction.

        An event whose id is already stored is a duplicate send: nothing of
        it is written, and its entry in the result is False. The ids of the
        events stored are announced on `EVENTS_RECORDED`.
        """
        ...

    async def get_event(self, event_id: str) -> EventRecord | None: ...

    async def list_events(self, name: str | None, older_than: tuple[int, str] | None, limit: int) -> list[EventRecord]:
        """At most `limit` events, newest first (by the time they were received,
        then by id, both descending): only those named `name` if given, and
        only those after `older_than`, the (received time, id) of the last
        event of the previous page. Served by an index either way."""
        ...

    async def get_events(self, event_ids: Sequence[str]) -> list[EventRecord]:
        """The stored events among `event_ids`, in the order given (ids not stored are left out)."""
        ...

    async def events_since(self, received_after_ms: int, limit: int) -> list[EventRecord]:
        """Up to `limit` events received after `received_after_ms`, ordered by
        (received_at_ms, id): how a process catches up on events it was not told of."""
        ...

    async def get_run(self, run_id: str) -> RunRecord | None: ...

    async def skipped_starts(self, event_id: str) -> list[SkippedStart]:
        """The runs `event_id` would have started that their gates refused, oldest first."""
        ...

    async def event_holds(self, event_id: str) -> list[EventHold]:
        """The debounces and batches that held `event_id` (see `EventHold`), by
        function id, read in one statement: a held start that fires meanwhile
        is seen either still holding the event or with its run. An event is
        recorded as held in the transaction that records it (`NewEvent.holds`,
        one row per function), and the run a held start fires is written to
        the rows of the events it starts with, in the transaction that fires
        it. Events recorded by a release before schema 11 have none."""
        ...

    async def load_run(self, run_id: str) -> LoadedRun | None:
        """A run, its event and its memos, read in one operation."""
        ...

    async def runs_for_event(self, event_id: str) -> list[RunRecord]:
        """The runs an event started, oldest first."""
        ...

    async def runs_with_status(self, status: str) -> list[RunRecord]: ...

    async def list_runs(self, query: RunFilter) -> list[RunRecord]:
        """The runs `query` selects, newest first: by start, then by run id, both
        descending. An index serves every combination of conditions (see the
        schema), so a page costs the same with ten runs or a million."""
        ...

    async def list_skipped(self, query: RunFilter) -> list[SkippedStart]:
        """The starts flow control refused that `query` selects (`status` is not
        looked at; the time of the refusal stands for the start), newest first."""
        ...

    async def run_steps(self, run_id: str) -> list[StepMemo]:
        """A run's stored steps in the order they were stored, each with its
        `info` (None for a step stored without one)."""
        ...

    async def get_memos(self, run_id: str) -> list[StepMemo]:
        """A run's step memos in the order they were stored."""
        ...

    async def put_memo(self, run_id: str, memo: StepMemo) -> bool:
        """Store one memo unless the step has one already; True if this call stored it."""
        ...

    async def request_cancel(self, run_id: str) -> bool:
        """Flag a Running run for cancellation; False if no Running run has that id.
        Notifies `RUN_CANCEL_REQUESTED` when it set the flag."""
        ...

    async def save_run(
        self,
        run: RunRecord,
        *,
        fence: int,
        memos: list[StepMemo] | None = None,
        consumed_request_id: str | None = None,
        events: list[NewEvent] | None = None,
        slots: SlotChange | None = None,
    ) -> list[bool]:
        """Atomically: replace the run's state (all but `cancel_requested`),
        add `memos` (a memo already stored under the same step hash is kept,
        first result wins), delete the reply, lease and queued request stored for `consumed_request_id`,
        record `events` as `record_events` does, and change the run's
        concurrency `slots` (see `SlotChange`: what `release_slots`,
        `release_run_slots` and `acquire_slots` would do, with the same
        guarantees, grants announced on `SLOTS_GRANTED` once committed, and
        `slots.held` set). Returns, per event, whether it was new.

        `fence` is the run's fencing token as its owner got it (see
        `claim_runs`); if the run's token has moved on, nothing is written and
        `RunOwnershipLost` is raised."""
        ...

    # --- executor: run ownership ----------------------------------------------
    #
    # A Running run is owned by one executor at a time. An owner stays alive
    # by renewing its heartbeat before it expires; once it has expired, any
    # executor may claim the owner's runs. Each claim raises the run's fencing
    # token, and every `save_run` carries the token its writer got, so the
    # writes of an owner that lost its runs (paused, partitioned, slow to
    # renew) are refused rather than interleaved with the new owner's.
    # Expiry is judged with the claiming executor's clock against the time the
    # owner wrote: clocks must agree to well within the heartbeat's lifetime.

    async def heartbeat(self, owner: str, expires_at_ms: int) -> None:
        """Record that `owner` is alive until `expires_at_ms` (Unix ms)."""
        ...

    async def claim_runs(self, owner: str, now_ms: int, limit: int) -> list[Claim]:
        """Take up to `limit` Running runs that nobody owns or whose owner (not
        `owner` itself) has no heartbeat lasting past `now_ms`. Two callers
        never get the same run: each claim raises the run's fencing token, and
        the one returned is the new one."""
        ...

    async def release_runs(self, owner: str) -> int:
        """Give up every Running run `owner` holds (they are claimable at once)
        and forget its heartbeat; returns how many runs were released.
        Notifies `RUNS_RELEASED` when it released any."""
        ...

    # --- notifications ------------------------------------------------------------

    async def notify(self, channel: str, payload: str) -> None:
        """Send `payload` on `channel` to every listener: in every process on the
        database (PostgreSQL, this process included), or of this store object
        (SQLite). Payloads must stay under 8000 bytes."""
        ...

    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call `callback(payload)` for every notification on `channel` committed
        from now on: by any process on the database (PostgreSQL), or through
        this store object (SQLite, which one process uses at a time). A
        notification may be lost (a dropped connection); the callback is then
        called with "" once it is back, and listeners keep a slow sweep of
        their own rather than rely on notifications alone."""
        ...

    # --- the executor⇄gateway port across processes: queued requests ------------------

    async def queue_request(self, request: QueuedRequest) -> None:
        """Queue `request` for any gateway (notifying `REQUEST_QUEUED`). Queuing a
        request id again clears a lapse but leaves a live hold alone: a gateway
        still forwarding it keeps it."""
        ...

    async def take_requests(
        self, gateway: str, function_slugs: Sequence[str], now_ms: int, hold_until_ms: int, limit: int
    ) -> list[QueuedRequest]:
        """Take up to `limit` queued requests for these functions, oldest first,
        that no gateway holds past `now_ms`, and hold them for `gateway` until
        `hold_until_ms`. Two gateways never take the same request at once."""
        ...

    async def hold_requests(self, gateway: str, request_ids: Sequence[str], hold_until_ms: int) -> None:
        """Extend `gateway`'s hold on the requests it still forwards."""
        ...

    async def settle_request(self, request_id: str, gateway: str, outcome: str) -> bool:
        """End `gateway`'s hold with `ANSWERED`, `RETURNED` or `LAPSED` (see those),
        notifying `REQUEST_SETTLED` (or `REQUEST_QUEUED` for a return). False,
        and nothing changed, if `gateway` does not hold it (any more)."""
        ...

    async def request_lapsed(self, request_id: str) -> bool:
        """Whether the queued request's worker was lost (`LAPSED`)."""
        ...

    async def dequeue_request(self, request_id: str) -> None:
        """Remove the request from the queue, whatever its state."""
        ...

    async def request_queue_stats(self, now_ms: int, limit: int) -> RequestQueueStats:
        """How many queued requests wait, are held and lapsed at `now_ms`, and
        when the oldest waiting one was queued, over at most `limit` rows of
        the queue (in no order: past the limit, the counts are lower bounds
        and the oldest is that of the rows read; `truncated` says so). One
        statement, no lock taken; for metrics, never on a request's path."""
        ...

    async def taken_request(self, request_id: str, gateway: str, now_ms: int) -> TakenRequest:
        """The stored reply of a request `gateway` took, whether it still
        holds it, and whether a lease of it is live at `now_ms`, as of one instant. A request that is no longer held and
        has no reply was answered and its reply consumed (`save_run` removes
        both), or its hold lapsed and another gateway has it: either way this
        gateway must not forward it."""
        ...

    # --- the process registry -------------------------------------------------------
    #
    # Every process of a split deployment registers itself, and every gateway its
    # worker connections, each entry with an expiry the owner renews. An entry not
    # renewed in time is invisible, as if dropped. Entries expired for longer than
    # `REGISTRY_KEEP_MS` before the expiry of one being written are deleted by that
    # write, so the tables hold little more than the live entries (with or without
    # history retention).

    async def put_process(self, record: ProcessRecord) -> None:
        """Create or replace the entry of (`record.process_id`, `record.role`),
        notifying `PROCESSES_CHANGED` when it is new or its state changed."""
        ...

    async def list_processes(self, role: str | None, now_ms: int) -> list[ProcessRecord]:
        """Processes (of `role`, or of any role) whose entry expires after `now_ms`,
        oldest start first."""
        ...

    async def drop_process(self, process_id: str, role: str) -> None:
        """Remove the entry (notifying `PROCESSES_CHANGED`): the process stopped."""
        ...

    async def put_connections(self, gateway_id: str, records: list[ConnectionRecord]) -> None:
        """Replace every connection entry of `gateway_id` with `records`."""
        ...

    async def list_connections(self, now_ms: int) -> list[ConnectionRecord]:
        """Connections whose entry expires after `now_ms`, by gateway then connection id."""
        ...

    def put_lease_within(
        self, request_id: str, lease_id: str, expires_at_ms: int, instance_id: str, limit: int, now_ms: int
    ) -> Awaitable[bool]:
        """`put_lease`, but only if `request_id` already has a lease for
        `instance_id`, or that instance holds fewer than `limit` leases of other
        requests expiring after `now_ms`; True if the lease was stored. Atomic
        across processes: however many race for an instance's last slot, at
        most `limit` leases are held. This is how `max_worker_concurrency`
        holds across gateways."""
        ...

    # --- executor: concurrency slots ---------------------------------------------------
    #
    # A request of a function with concurrency limits holds one slot of each of
    # its keys (`SlotClaim`) while it runs on a worker. A request that does not
    # fit waits in the store, ordered by `order` (its run's start in ms, less
    # its priority), then by run id and request id, and is granted a slot when
    # a release frees room for it. Every call is atomic across processes: with
    # any number of callers, a key never has more slots held than the `limit`
    # of any request granted one (each request is checked against its own).

    async def acquire_slots(self, request_id: str, run_id: str, claims: Sequence[SlotClaim], order: int) -> bool:
        """Hold a slot of every claim's key for `request_id`, or wait for them;
        True when the request holds them (now, or since an earlier call).
        Granted at once when each key has fewer than its claim's `limit` held
        and no request ordered before this one waits on it; otherwise the
        request is recorded as waiting (calling again keeps its place, and
        grants it if it fits by then). An empty `claims` is granted. Slots
        still held for runs that ended (without a save releasing
        them) are taken back when a key is found full, and granted to the
        earliest waiters that fit, announced on `SLOTS_GRANTED` as a
        release's are."""
        ...

    async def release_slots(self, request_ids: Sequence[str]) -> list[str]:
        """Free the slots `request_ids` hold and forget their waits; then grant
        the earliest waiters that now fit, announcing them on `SLOTS_GRANTED`.
        Returns the request ids granted."""
        ...

    async def release_run_slots(self, run_id: str, keep: Sequence[str] = ()) -> list[str]:
        """`release_slots` for every request of `run_id` (but those in `keep`):
        a run that ended, or one read back whose earlier requests are done."""
        ...

    async def slots_held(self, key: str) -> list[str]:
        """The request ids holding a slot of `key` (for tests and the API)."""
        ...

    async def take_throttle_turn(self, run_id: str, now_ms: int) -> int | None:
        """For a run of a function with a throttle and a priority, in one
        transaction: 0 when it starts now (out of the key's line for good),
        else the turn (Unix ms) it waits for: its own, not come yet, or a
        later one, having given its own that came to a run ahead of it in
        line (announced on `THROTTLE_TURN_GRANTED`; see `start_gates.take_turn`).
        None for a run in no line (its start was not held back, or a request
        after it waits for a retry's backoff): it keeps the time it has. Runs
        of the line no longer Running leave it when a turn comes."""
        ...

    # --- executor: cron -------------------------------------------------------

    async def cron_ticks(self) -> dict[str, int]:
        """The last tick (Unix ms) scheduled for each cron schedule key."""
        ...

    async def record_tick(self, key: str, tick_ms: int, event: NewEvent) -> bool:
        """Record a cron tick's event and run, and remember the tick, in one
        transaction; False if the event was stored already (the tick ran).
        A stored event is announced on `EVENTS_RECORDED`."""
        ...

    # --- executor: debounces and batches (held starts) ------------------------------

    async def next_held_due(self) -> int | None:
        """The earliest `due_ms` of any held start, None when none is held."""
        ...

    async def start_held(self, owner: str, now_ms: int, limit: int) -> list[Claim]:
        """Fire up to `limit` held starts due at or before `now_ms`, earliest
        first: each is deleted and its run created (with its batch, see
        `LoadedRun.batch`), owned by `owner` with `NEW_RUN_FENCE`, in one
        transaction. Several callers at once never fire one held start twice
        (PostgreSQL: one skips what another holds)."""
        ...

    # --- history retention ------------------------------------------------------------

    async def prune_history(self, before_ms: int, limit: int, events_after: EventsCursor | None = None) -> Pruned:
        """Delete, in one small transaction, history that ended before `before_ms`.

        One batch deletes at most `limit` runs with their steps and the events
        that started them, examines at most `limit` other events (oldest
        first, after `events_after` when given), and deletes at most `limit`
        replies and `limit` leases. While `Pruned.reached(limit)`, call again
        with its `events_cursor`: a round that does so examines each old event
        once, however many of them live runs still need. What is deleted:

        * runs Completed, Failed or Cancelled with `ended_at_ms < before_ms`,
          oldest end first, with their steps and the events of their batch;
        * events received before `before_ms` that no remaining run refers to
          as its trigger: those of the runs deleted, the `inngest/function.*`
          events runs emitted, and events that started nothing. The memo a
          wait or an invoke resolved with holds its own copy of the event,
          so resolved waits need no event row;
        * skipped starts recorded before `before_ms` (at most `limit`), the
          `event_holds` of events held before `before_ms` (at most `limit`;
          such an event row goes too, as one that started no run),
          throttle and rate-limit state whose theoretical arrival time is
          before `before_ms` (which means the same as none), and singleton
          keys held by runs no longer Running (ended, whenever that was, or
          deleted: the same as no holder), at most `limit`, and as many
          places in a throttle's line of runs no longer Running;
        * replies stored before `before_ms` and before the oldest Running run
          started (a reply a live run may still consume was stored after it
          started), and leases that expired before `before_ms`.

        Never deleted: held starts (debounces and batches keep their events'
        bodies, and put the trigger's row back when they start a run),
        Running runs (sleeping, waiting for an event or an invoke, or
        mid-step), their steps and triggering events, runs that ended at or
        after `before_ms`, apps, and cron ticks (the last tick of each
        schedule is what keeps a tick from running twice). Two processes
        may prune at once: each takes rows the other has not locked.
        """
        ...
