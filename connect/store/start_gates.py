"""The gate a new run passes before it starts: throttle, rate limit (and
idempotency, a rate limit of 1 per 24 hours) and singleton.

A gate is decided where the run is recorded, inside the store transaction
that records its event (`record_events`), so that any number of processes
recording events at once never let more runs through than the limits allow:
the state each decision reads (a key's theoretical arrival time, the run a
singleton key holds) is read and written in that one transaction, under a
lock per key on PostgreSQL. This module is the decision itself, pure: the
stores read the state, call `decide` with the run's start time, and write
back what it returns.

Throttle and rate limit are both GCRA (generic cell rate algorithm) over a
key's theoretical arrival time `tat`: one start per `period / limit`, and up
to `limit + burst` at once after a quiet spell (a rate limit has no burst:
`limit` at once). A throttled run over the limit is not refused: it is
recorded with its first request due at its turn (`wake_at_ms`), so queued
runs start in the order they came, one emission interval apart. A run over
a rate limit is not created at all: the event is stored, and the skip with
its reason (`SkippedStart`). A singleton in `skip` mode skips a new run
while a run holding its key is Running; in `cancel` mode it flags that run
for cancellation and the new run starts.

With a `priority`, the runs a throttle holds back take its turns in the
order of their priority, as Inngest's backlog does: each such run waits in
the line of its key (`ThrottleWait`) with the turn the throttle gave it, and
when that turn comes it asks the store (`Store.take_throttle_turn`), which
gives the turn to the run first in line (`take_turn`), swapping turns.

A run started by `step.invoke` names the step that waits for it
(`StartGate.invoked_by`). When its gate refuses it, that step is given its
result in the same transaction: an error naming the reason
(`skipped_invoke_memo`), so the invoking run goes on at once instead of
waiting for the invoke's timeout, and a restart cannot lose the answer.

The state kept: one `tat` per (function, gate kind, key), and per singleton
key the run that holds it. A `tat` in the past means the same as none, and
so does a singleton key whose run is no longer Running: history retention
deletes both (`Store.prune_history`), so the state stays as small as the
keys in use.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Final, Literal

import msgspec

if TYPE_CHECKING:
    from connect.store.base import NewEvent, RunRecord

log = logging.getLogger("connect.store.start_gates")

_encode = msgspec.json.Encoder().encode

#: `connect.store.base.RUNNING` (not imported: the base imports this module).
RUNNING: Final = "Running"
#: The status of a run a gate refused, as the API shows it (it is never stored as a run).
SKIPPED: Final = "Skipped"

#: The kinds of GCRA state kept per key (`start_limits.kind`).
THROTTLE: Final = "throttle"
RATE_LIMIT: Final = "rate"

#: The error name an invoking step gets when the run it invoked is refused.
SKIPPED_INVOKE_ERROR: Final = "FunctionSkippedError"

#: How long an idempotency key holds, in milliseconds.
IDEMPOTENCY_PERIOD_MS: Final = 24 * 3600 * 1000


class Throttle(msgspec.Struct, frozen=True):
    """At most `limit` starts per `period_ms` for `key`, `limit + burst` at once.

    `order`: the run's place in the key's line when its function has a
    `priority` (its start time moved earlier by the priority's seconds; lower
    goes first), None when it has none: then runs take their turns in the
    order they came, fixed when they are recorded."""

    key: str
    limit: int
    period_ms: int
    burst: int = 0
    order: int | None = None


class RateLimit(msgspec.Struct, frozen=True):
    """At most `limit` runs per `period_ms` for `key`; `idempotency` names the
    option it came from in the skip's reason."""

    key: str
    limit: int
    period_ms: int
    idempotency: bool = False


class Singleton(msgspec.Struct, frozen=True):
    """One Running run at a time for `key`."""

    key: str
    mode: Literal["skip", "cancel"]


class Invoker(msgspec.Struct, frozen=True):
    """The run whose `step.invoke` step `step` waits for the gated run."""

    run_id: str
    step: str


class StartGate(msgspec.Struct, frozen=True):
    """What the new run `run_id` of `function_id` must pass, keys evaluated
    against its triggering event (see `NewEvent.gates`); `invoked_by`, the
    step told when the run is refused (a run started by `step.invoke`)."""

    run_id: str
    function_id: str
    throttle: Throttle | None = None
    rate_limit: RateLimit | None = None
    singleton: Singleton | None = None
    invoked_by: Invoker | None = None

    def lock_keys(self) -> list[str]:
        """The keys of state this gate reads and writes (lock them in sorted order)."""
        keys: list[str] = []
        if self.singleton is not None:
            keys.append(state_key(self.function_id, "singleton", self.singleton.key))
        if self.rate_limit is not None:
            keys.append(state_key(self.function_id, RATE_LIMIT, self.rate_limit.key))
        if self.throttle is not None:
            keys.append(state_key(self.function_id, THROTTLE, self.throttle.key))
        return keys


class SkippedStart(msgspec.Struct, frozen=True):
    """A run an event would have started, refused by its gate (stored in place of the run)."""

    run_id: str
    function_id: str
    event_id: str
    reason: str
    at_ms: int


class Decision(msgspec.Struct, frozen=True):
    """What a gate decided for one run, and the state to write back.

    `skip`: why the run is not created (None: it is). `wake_at_ms`: when a
    throttled run starts (0: now). `cancel`: the Running run a singleton in
    `cancel` mode cancels. `rate_tat` / `throttle_tat`: the keys' new
    theoretical arrival times (None: unchanged). `hold`: whether the run now
    holds its singleton key."""

    skip: str | None = None
    wake_at_ms: int = 0
    cancel: str | None = None
    rate_tat: int | None = None
    throttle_tat: int | None = None
    hold: bool = False


def gcra(tat_ms: int | None, now_ms: int, limit: int, period_ms: int, burst: int) -> tuple[int, int]:
    """One request at `now_ms` against a key whose theoretical arrival time
    is `tat_ms` (None: never used): when it may go (>= now_ms), and the key's
    new theoretical arrival time if it goes then.

    The emission interval is `period_ms / limit`; up to `limit + burst`
    requests go at once after a quiet spell."""
    limit = max(limit, 1)
    # In whole milliseconds, rounded up (never a start early), so that exactly
    # `limit + burst` fit at once however the period divides.
    interval = max(math.ceil(period_ms / limit), 1)
    tolerance = interval * (limit + max(burst, 0) - 1)
    tat = max(tat_ms if tat_ms is not None else now_ms, now_ms)
    return max(now_ms, tat - tolerance), tat + interval


def decide(
    gate: StartGate,
    now_ms: int,
    *,
    running: str | None,
    rate_tat: int | None,
    throttle_tat: int | None,
) -> Decision:
    """The gate's decision for a run recorded at `now_ms`, given the Running
    run holding its singleton key (`running`) and its keys' stored
    theoretical arrival times. Checked in this order: singleton, rate limit,
    throttle; a skipped run changes no state."""
    cancel = None
    if gate.singleton is not None and running is not None:
        if gate.singleton.mode == "skip":
            return Decision(skip=f"singleton: run {running} is running for key {gate.singleton.key!r}")
        cancel = running
    new_rate_tat = None
    if gate.rate_limit is not None:
        r = gate.rate_limit
        allowed, after = gcra(rate_tat, now_ms, r.limit, r.period_ms, 0)
        if allowed > now_ms:
            what = "idempotency" if r.idempotency else f"rate limit {r.limit} per {r.period_ms / 1000:g}s"
            return Decision(skip=f"{what}: key {r.key!r} is over its limit until {allowed} (Unix ms)")
        new_rate_tat = after
    wake_at, new_throttle_tat = 0, None
    if gate.throttle is not None:
        t = gate.throttle
        allowed, new_throttle_tat = gcra(throttle_tat, now_ms, t.limit, t.period_ms, t.burst)
        wake_at = allowed if allowed > now_ms else 0
    return Decision(
        wake_at_ms=wake_at,
        cancel=cancel,
        rate_tat=new_rate_tat,
        throttle_tat=new_throttle_tat,
        hold=gate.singleton is not None,
    )


def apply(new: NewEvent, run: RunRecord, decision: Decision) -> SkippedStart | None:
    """Report `decision` on the run object and its event (see `NewEvent.gates`);
    the skip to store in place of the run, if it is refused. Idempotent, so a
    transaction applied again reports only its last decision: a singleton
    cancel an earlier attempt added to `new.cancels` is taken out first."""
    gated_cancel = new.gated_cancels.pop(run.run_id, None)
    if gated_cancel is not None and gated_cancel in new.cancels:
        new.cancels.remove(gated_cancel)
    return apply_to_run(run, decision, new.cancels, new.gated_cancels)


def apply_to_run(
    run: RunRecord, decision: Decision, cancels: list[str], gated_cancels: dict[str, str] | None = None
) -> SkippedStart | None:
    """Report `decision` on `run` (status, first request's turn), adding the run
    a singleton cancels to `cancels` (and to `gated_cancels`, by the run's id,
    so that the next attempt can take it out); the skip to store in place of
    the run, if it is refused."""
    if decision.skip is not None:
        run.status = SKIPPED
        return SkippedStart(run.run_id, run.function_id, run.event_id, decision.skip, run.started_at_ms)
    run.status = RUNNING
    if run.requests:
        run.requests[0] = msgspec.structs.replace(run.requests[0], wake_at_ms=decision.wake_at_ms)
    if decision.cancel is not None and decision.cancel not in cancels:
        cancels.append(decision.cancel)
        if gated_cancels is not None:
            gated_cancels[run.run_id] = decision.cancel
    return None


def admitted(gate: StartGate) -> StartGate | None:
    """What of `gate` an event held by a debounce passes before it is held (its
    rate limit or idempotency: Inngest checks those for each event, and an
    event over them never joins the debounce), None if nothing."""
    if gate.rate_limit is None:
        return None
    return StartGate(gate.run_id, gate.function_id, rate_limit=gate.rate_limit)


def at_fire(gate: StartGate) -> StartGate | None:
    """What of `gate` the run a debounce or batch fires passes when it starts
    (its throttle and singleton), None if nothing."""
    if gate.throttle is None and gate.singleton is None:
        return None
    return StartGate(gate.run_id, gate.function_id, throttle=gate.throttle, singleton=gate.singleton)


def encode_gate(gate: StartGate) -> bytes:
    """`gate` as a held start keeps it until it fires (`HeldStart.gate`)."""
    return _encode(gate)


def decode_gate(data: bytes, run_id: str) -> StartGate:
    """The gate a held start kept, for the run `run_id` it fires."""
    return msgspec.structs.replace(_decode_gate(data), run_id=run_id)


_decode_gate = msgspec.json.Decoder(StartGate).decode


class ThrottleWait(msgspec.Struct, frozen=True):
    """A run of a function with a throttle and a priority, waiting for its
    turn: `turn_ms` is the start time the throttle gave it (or a later one it
    took in a swap, see `take_turn`). Its place in line is (`order`, `seq`,
    `run_id`): `seq` is the turn it was first given, so runs of equal order
    (same start time and priority) keep the order they came in."""

    run_id: str
    order: int
    seq: int
    turn_ms: int


class Turn(msgspec.Struct, frozen=True):
    """What `take_turn` decided for the run that asked: `wait_ms` 0, start
    now (and leave the line); otherwise wait until then and ask again.
    `granted`: the run given the asker's turn in its place (its turn in line
    becomes the asker's, which came: it starts as soon as it asks, told on
    `THROTTLE_TURN_GRANTED`), None if none."""

    wait_ms: int = 0
    granted: str | None = None


def take_turn(me: ThrottleWait, now_ms: int, *, due: int, ahead: int, later: ThrottleWait | None) -> Turn:
    """The throttle turn of run `me` at `now_ms`, given of the runs waiting
    in the line of its (function, key): how many have a turn due at `now_ms`
    (`due`, `me` among them), how many are ahead of `me` (`ahead`), and the
    first of those whose turn has not come (`later`).

    Turns are the start times the throttle handed out, one per waiting run,
    so however they are shared the key never starts more runs than its
    limit. Priority decides who takes a turn that came: of the `due` turns,
    the `due` runs first in line. So a run whose turn came starts if fewer
    than `due` runs are ahead of it; otherwise it swaps turns with `later`
    (there is one: more runs are ahead than turns are due), which starts
    now, while this one waits for the later turn. (A run given a turn this
    way starts when it asks: every run ahead of it has a turn due, as it was
    the first whose turn had not come; unless a run that joined since is
    ahead of it, which then takes the turn.)"""
    if me.turn_ms > now_ms:
        return Turn(wait_ms=me.turn_ms)
    if ahead < due or later is None:
        return Turn()
    return Turn(wait_ms=later.turn_ms, granted=later.run_id)


def skipped_invoke_memo(skip: SkippedStart) -> bytes:
    """The result stored for the `step.invoke` step whose run `skip` refused:
    an error naming the function and why (the step raises it in the invoking run)."""
    message = f"the invoked function {skip.function_id!r} started no run: {skip.reason}"
    return _encode({"error": {"name": SKIPPED_INVOKE_ERROR, "message": message}})


def report_skip(skip: SkippedStart) -> None:
    """The log line of a run not created."""
    log.info(
        "event %s started no run of function %s: %s (recorded as skipped run %s)",
        skip.event_id,
        skip.function_id,
        skip.reason,
        skip.run_id,
    )


def state_key(function_id: str, kind: str, key: str) -> str:
    """The name of the state of one gate kind's key of a function (what
    `StartGate.lock_keys` lists, and engines lock)."""
    return f"{function_id}\x1f{kind}\x1f{key}"
