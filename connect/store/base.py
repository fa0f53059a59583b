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

from typing import Final, Protocol

import msgspec

from protocol.payloads import FunctionConfig

# Run statuses, exactly as the REST API shows them.
RUNNING: Final = "Running"
COMPLETED: Final = "Completed"
FAILED: Final = "Failed"
CANCELLED: Final = "Cancelled"

#: The `step_id` of a discovery request (no particular step targeted).
DISCOVERY: Final = "step"


class StoreClosed(RuntimeError):
    """The store was closed; no further operations are accepted."""


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


class StepMemo(msgspec.Struct, frozen=True):
    """A stored step result: the JSON `{"data": ...}`, `{"error": ...}` or `null`."""

    step_hash: str
    result: bytes


class RunRecord(msgspec.Struct):
    """Everything needed to resume a run after a restart, apart from its memos.

    While the run is `Running`, `pending_request_id` names the next request to
    dispatch (targeting `step_id` at `attempt`), and it is stored before that
    request is sent. After a restart the same id is dispatched again, so a
    reply stored before the crash (or a worker still holding a lease on it) is
    picked up instead of running the step a second time.

    `wake_at_ms` > 0 delays that dispatch (a retry backoff or a sleep); when
    `sleep_step` is set, a `null` memo is stored for it at the wake time.
    `planned` holds the step ids reported together in one reply that are
    still to be run, one after another, before the next discovery.
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
    attempt: int = 0
    step_id: str = DISCOVERY
    pending_request_id: str = ""
    disable_immediate_execution: bool = False
    request_version: int = -1
    planned: list[str] = msgspec.field(default_factory=list)
    wake_at_ms: int = 0
    sleep_step: str = ""
    output: bytes | None = None
    ended_at_ms: int | None = None


class NewEvent(msgspec.Struct, frozen=True):
    """An event to record together with the runs it starts."""

    event: EventRecord
    runs: list[RunRecord]


class ReplyStore(Protocol):
    """What the gateway needs: step replies and request leases.

    Every awaited write has been durably committed when it returns (with the
    backend's own notion of durable: for SQLite, the WAL survives a killed
    process). Writes from concurrent callers may share one commit.
    """

    async def put_reply(self, request_id: str, data: bytes) -> bool:
        """Store a reply unless one is stored already; True if this call stored it."""
        ...

    async def get_reply(self, request_id: str) -> bytes | None: ...

    async def put_lease(self, request_id: str, lease_id: str, expires_at_ms: int, instance_id: str) -> None:
        """Create or replace the lease on `request_id`."""
        ...

    async def get_lease(self, request_id: str) -> LeaseRecord | None: ...

    async def delete_lease(self, request_id: str) -> None: ...

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
        """Create or replace the registration of `app.app_name`."""
        ...

    async def list_apps(self) -> list[AppRecord]: ...

    # --- executor: events and runs ------------------------------------------

    async def record_events(self, events: list[NewEvent]) -> list[bool]:
        """Store events and the runs they start, all in one transaction.

        An event whose id is already stored is a duplicate send: neither it
        nor its runs are written, and its entry in the result is False.
        """
        ...

    async def get_event(self, event_id: str) -> EventRecord | None: ...

    async def get_run(self, run_id: str) -> RunRecord | None: ...

    async def runs_for_event(self, event_id: str) -> list[RunRecord]:
        """The runs an event started, oldest first."""
        ...

    async def runs_with_status(self, status: str) -> list[RunRecord]: ...

    async def get_memos(self, run_id: str) -> list[StepMemo]:
        """A run's step memos in the order they were stored."""
        ...

    async def save_run(
        self,
        run: RunRecord,
        *,
        memos: list[StepMemo] | None = None,
        consumed_request_id: str | None = None,
    ) -> None:
        """Atomically: replace the run's state, add `memos` (a memo already
        stored under the same step hash is kept, first result wins) and
        delete the reply stored for `consumed_request_id`."""
        ...
