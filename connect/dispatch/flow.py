"""The reply and checkpoint flow of one step request (sans-I/O).

`RequestFlow` decides, for one request the gateway dispatched, what happens
to what its worker sends: whether a checkpoint goes to the executor, when a
reply must wait, whether a reply is handed over or stored, and when the
worker may be acknowledged. The gateway's dispatcher feeds it events and
carries out the actions it returns; it decides nothing about the flow itself.

States::

    RUNNING ──CheckpointSent──▶ CHECKPOINTING ──Replied──▶ REPLY_BEHIND
       ▲  ◀──CheckpointDecided──────────┘                         │
       └──────────────────────CheckpointDecided / CheckpointJoined┘
    RUNNING ──Replied──▶ HANDED_OVER (takes_over) ──ReplySettled(True)──▶ SETTLED
                 └─────▶ STORING ◀──ReplySettled(False)──┘   ──ReplyStored──▶ SETTLED
    RUNNING / CHECKPOINTING / REPLY_BEHIND / STORING ──LeaseLapsed──▶ LAPSED

Rules it holds:

* a reply is acknowledged only once durable: stored here, or committed by a
  caller that `takes_over` (`ReplySettled(True)`); one not committed is stored;
* one checkpoint at a time is with the executor; a reply arriving meanwhile
  waits for the decision (`Hold`, then `Release`), since the reply may end
  the request differently depending on it;
* a checkpoint sent over the socket and refused stands in for the request's
  reply: the worker may already have sent its reply behind it, and a worker
  that waited for the refusal would have ended the request with that step;
* a socket checkpoint with the reply right behind it may be joined to that
  reply (`CheckpointJoined`): both are stored by one commit, whose outcome
  comes as `CheckpointDecided` before the reply is settled.

Time is not kept here: when a lease lapses is decided by
`protocol.leases.LeaseTable`, which has the clock; this machine is told
`LeaseLapsed`. Events that a well-behaved peer can repeat (a late ACK, a
duplicate reply from a lost worker) are legal; anything else out of order
raises `IllegalTransition`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from connect.dispatch.messages import CheckpointDecided, CheckpointJoined, ReplySettled


class State(enum.Enum):
    #: With a worker (or awaited from before a restart); no reply taken.
    RUNNING = "running"
    #: A checkpoint is with the executor, undecided.
    CHECKPOINTING = "checkpointing"
    #: ... and the request's reply came: it waits for the decision.
    REPLY_BEHIND = "reply_behind"
    #: The reply is with a caller that `takes_over`, awaiting its commit.
    HANDED_OVER = "handed_over"
    #: The gateway stores the reply.
    STORING = "storing"
    #: The reply is durable.
    SETTLED = "settled"
    #: The lease ran out with no reply: the request is dispatched again.
    LAPSED = "lapsed"


# --- events -------------------------------------------------------------------------
# Besides these, the executor's messages `CheckpointJoined`, `CheckpointDecided`
# and `ReplySettled` (`connect.dispatch.messages`) are fed in as they come.


@dataclass(frozen=True, slots=True)
class Forwarded:
    """The request was sent to a worker (again)."""


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """The worker took the request (`ok`) or refused it."""

    ok: bool


@dataclass(frozen=True, slots=True)
class CheckpointSent:
    """A worker sent steps it ran, going on once they are stored.

    `over_socket`: a WORKER_CHECKPOINT (a refusal stands in for the reply),
    not an HTTP checkpoint. `on_lease`: the sender holds the request's lease
    (always True over HTTP, where nothing names the worker)."""

    body: bytes
    over_socket: bool = True
    on_lease: bool = True


@dataclass(frozen=True, slots=True)
class Replied:
    """The worker's reply (the request's end)."""

    body: bytes


@dataclass(frozen=True, slots=True)
class ReplyStored:
    """Storing a reply ended; `first`: it is the stored one (first stored wins)."""

    first: bool


@dataclass(frozen=True, slots=True)
class LeaseLapsed:
    """The request's lease ran out and no reply is stored."""


Event = (
    Forwarded
    | Acknowledged
    | CheckpointSent
    | CheckpointJoined
    | CheckpointDecided
    | Replied
    | ReplySettled
    | ReplyStored
    | LeaseLapsed
)


# --- actions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wake:
    """The waiting dispatch looks again (a refused request)."""


@dataclass(frozen=True, slots=True)
class Decide:
    """Hand the checkpoint to the executor (see `RequestFlow.joinable`)."""

    body: bytes


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer the checkpoint "not stored" now. `stale`: the request is not in
    flight any more (its reply is taken, or its lease lapsed)."""

    stale: bool


@dataclass(frozen=True, slots=True)
class Hold:
    """Keep the reply until the checkpoint is decided."""


@dataclass(frozen=True, slots=True)
class Release:
    """Feed the held replies again (`Replied`): the checkpoint is decided."""


@dataclass(frozen=True, slots=True)
class HandOver:
    """Give `body` to the caller as the request's reply, before it is durable."""

    body: bytes


@dataclass(frozen=True, slots=True)
class Store:
    """Store `body` as the request's reply (first stored wins)."""

    body: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    """The stored `body` answers the waiting dispatch."""

    body: bytes


@dataclass(frozen=True, slots=True)
class DeliverStored:
    """Another reply was stored first: read it, and it answers the waiting dispatch."""


@dataclass(frozen=True, slots=True)
class Acknowledge:
    """The reply is durable: the worker may be acknowledged."""


Action = Wake | Decide | Refuse | Hold | Release | HandOver | Store | Deliver | DeliverStored | Acknowledge


class IllegalTransition(Exception):
    """An event the flow cannot take in its state (a bug in whoever fed it)."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"{type(event).__name__} is not allowed in state {state.value}")
        self.state = state
        self.event = event


_IN_FLIGHT = frozenset({State.RUNNING, State.CHECKPOINTING, State.REPLY_BEHIND})
_DECIDING = frozenset({State.CHECKPOINTING, State.REPLY_BEHIND})
_TAKEN = frozenset({State.HANDED_OVER, State.STORING, State.SETTLED})


class RequestFlow:
    """One request's flow (see the module docstring).

    `takes_over`: the caller makes replies durable in its own commit.
    `offers_checkpoints`: the request's payload offers checkpoints."""

    __slots__ = (
        "_checkpoint",
        "_delivered",
        "_handed",
        "_joined",
        "_kept",
        "_refused",
        "_storing",
        "acked",
        "offers_checkpoints",
        "reply_behind",
        "state",
        "takes_over",
    )

    def __init__(self, *, takes_over: bool, offers_checkpoints: bool) -> None:
        self.takes_over = takes_over
        self.offers_checkpoints = offers_checkpoints
        self.state = State.RUNNING
        #: None until the worker of the current forward answers it.
        self.acked: bool | None = None
        #: A reply came while a checkpoint was being decided: the worker has
        #: returned and waits for neither answer.
        self.reply_behind = False
        # The checkpoint with the executor, and whether its refusal is kept.
        self._checkpoint = b""
        self._kept = False
        # A checkpoint joined to the reply whose commit has not told its outcome.
        self._joined = False
        # The last refused socket checkpoint: it stands in for the request's reply.
        self._refused: bytes | None = None
        # Whether a reply answered the waiting dispatch (handed over or stored).
        self._delivered = False
        # The reply handed over, and the one being stored (for `Deliver`).
        self._handed = b""
        self._storing = b""

    @property
    def joined(self) -> bool:
        """A checkpoint joined to the reply awaits its commit's outcome."""
        return self._joined

    @property
    def refused(self) -> bytes | None:
        """The refused checkpoint that stands in for the reply, if any."""
        return self._refused

    def handle(self, event: Event) -> list[Action]:
        """Take `event`; the actions to carry out, in order."""
        state = self.state
        if isinstance(event, Forwarded):
            if state is not State.RUNNING:
                raise IllegalTransition(state, event)
            self.acked = None
            self._refused = None
            return []
        if isinstance(event, Acknowledged):
            # A late answer (after the reply, say) changes nothing.
            if state is not State.RUNNING or self.acked is not None:
                return []
            self.acked = event.ok
            return [] if event.ok else [Wake()]
        if isinstance(event, CheckpointSent):
            return self._offered(event)
        if isinstance(event, CheckpointJoined):
            if not self.joinable():
                raise IllegalTransition(state, event)
            self._joined = True
            self.state = State.RUNNING
            return [Release()]
        if isinstance(event, CheckpointDecided):
            return self._decided(event)
        if isinstance(event, Replied):
            return self._replied(event)
        if isinstance(event, ReplySettled):
            if state is not State.HANDED_OVER:
                raise IllegalTransition(state, event)
            if event.committed:
                self.state = State.SETTLED
                return [Acknowledge()]
            self.state = State.STORING
            return [Store(self._refused or self._handed)]
        if isinstance(event, ReplyStored):
            if state is State.RUNNING or state in _DECIDING:
                raise IllegalTransition(state, event)
            if state is not State.STORING:
                return [Acknowledge()]  # a duplicate reply, stored or not: the worker is done with it
            self.state = State.SETTLED
            if self._delivered:
                return [Acknowledge()]
            self._delivered = True
            return [Deliver(self._storing), Acknowledge()] if event.first else [DeliverStored(), Acknowledge()]
        if isinstance(event, LeaseLapsed):
            # STORING: the store has not answered within the lease; the
            # request is dispatched again and the reply, once stored, answers it.
            if state not in _IN_FLIGHT and state is not State.STORING:
                raise IllegalTransition(state, event)
            self.state = State.LAPSED
            return []
        raise IllegalTransition(state, event)  # pragma: no cover - the union is exhaustive

    def _offered(self, event: CheckpointSent) -> list[Action]:
        state = self.state
        if state in _TAKEN or state is State.LAPSED:
            return [Refuse(stale=True)]
        if state in _DECIDING:
            return [Refuse(stale=False)]
        if not self.offers_checkpoints or not event.on_lease or self.acked is False:
            if event.over_socket:
                self._refused = event.body
            return [Refuse(stale=False)]
        self.state = State.CHECKPOINTING
        self._checkpoint = event.body
        self._kept = event.over_socket
        self._refused = None
        return [Decide(event.body)]

    def _decided(self, event: CheckpointDecided) -> list[Action]:
        state = self.state
        if self._joined and state not in _DECIDING:
            # The outcome of the commit that carried a joined checkpoint.
            self._joined = False
            self._refused = None if event.stored else self._checkpoint
            return []
        if state is State.LAPSED:
            return []  # nobody waits for the request any more
        if state not in _DECIDING:
            raise IllegalTransition(state, event)
        if self._kept:
            self._refused = None if event.stored else self._checkpoint
        self.state = State.RUNNING
        return [Release()] if state is State.REPLY_BEHIND else []

    def joinable(self) -> bool:
        """Whether the checkpoint being decided may be joined to the reply
        behind it: the caller commits replies itself, and the checkpoint came
        over the socket (so it is an SDK response that can stand in for the
        reply if that commit fails; an HTTP checkpoint is a bare list of ops)."""
        return self.state is State.REPLY_BEHIND and self.takes_over and self._kept

    def _replied(self, event: Replied) -> list[Action]:
        state = self.state
        if state in _DECIDING:
            self.state = State.REPLY_BEHIND
            self.reply_behind = True
            return [Hold()]
        body = self._refused or event.body
        if state is State.RUNNING:
            if self.takes_over:
                self.state = State.HANDED_OVER
                self._delivered = True
                self._handed = body
                return [HandOver(body)]
            self.state = State.STORING
            self._storing = body
            return [Store(body)]
        # A second reply (a lost worker's, say), or one after a lapse: stored
        # for what it is worth, and first stored wins.
        return [Store(body)]
