"""Checkpoints of the requests in flight: sent, answered, refused, lost.

A handler sends a finished step as WORKER_CHECKPOINT and waits for the
answer (WORKER_CHECKPOINT_ACK: stored or not) before its next step. The
rules, decided here without I/O:

- One checkpoint per request waits at a time.
- A checkpoint not stored ends its request with that step: the request's
  reply, when it comes, is replaced by the checkpoint; a reply already sent
  behind it is replaced, for any later delivery, by the checkpoint (the
  gateway does the same with the copy it received).
- A connection that ends answers its waiting checkpoints "not stored": no
  answer can come, and the request ends with that step.

`S` is the connection a checkpoint went out on (compared by identity), `A`
the handler's wait (resolved by the caller, on the handler's loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

S = TypeVar("S")
A = TypeVar("A")


@dataclass(eq=False)
class Waiting(Generic[S, A]):
    """A checkpoint sent and not yet answered."""

    sock: S
    answer: A
    raw: bytes  # the SDKResponse sent: one StepRun op
    reply_behind: bool = False  # the request's reply went out right behind it


@dataclass(frozen=True)
class Answered(Generic[A]):
    """Resolve `answer` with `stored`; if `replace` is set, request `rid`'s
    buffered reply is to be replaced by it."""

    rid: str
    answer: A
    stored: bool
    replace: bytes | None = None


class Checkpoints(Generic[S, A]):
    def __init__(self) -> None:
        self.waiting: dict[str, Waiting[S, A]] = {}
        # Checkpoints not stored whose request has not replied yet.
        self.refused: dict[str, bytes] = {}

    def __len__(self) -> int:
        """Checkpoints waiting for their answer."""
        return len(self.waiting)

    def may_send(self, rid: str) -> bool:
        return rid not in self.waiting

    def sent(self, sock: S, rid: str, raw: bytes, answer: A) -> None:
        self.waiting[rid] = Waiting(sock, answer, raw)

    def not_sent(self, rid: str, raw: bytes) -> None:
        """It could not go out: the request ends with this step."""
        self.refused[rid] = raw

    def answer(self, rid: str, stored: bool) -> Answered[A] | None:
        """The gateway answered; None for a checkpoint no longer waiting."""
        waiting = self.waiting.pop(rid, None)
        return None if waiting is None else self._decide(rid, waiting, stored)

    def lost(self, sock: S) -> list[Answered[A]]:
        """`sock` ended: every checkpoint waiting on it is answered "not stored"."""
        out = []
        for rid, waiting in list(self.waiting.items()):
            if waiting.sock is sock:
                del self.waiting[rid]
                out.append(self._decide(rid, waiting, False))
        return out

    def reply(self, rid: str, raw: bytes) -> bytes:
        """The request replied: the reply to buffer and send (the refused
        checkpoint instead, if there is one)."""
        raw = self.refused.pop(rid, raw)
        waiting = self.waiting.get(rid)
        if waiting is not None:
            waiting.reply_behind = True
        return raw

    def _decide(self, rid: str, waiting: Waiting[S, A], stored: bool) -> Answered[A]:
        if stored:
            return Answered(rid, waiting.answer, True)
        if waiting.reply_behind:
            return Answered(rid, waiting.answer, False, replace=waiting.raw)
        self.refused[rid] = waiting.raw
        return Answered(rid, waiting.answer, False)
