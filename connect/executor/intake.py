"""What recording a batch of events will do, prepared before the store write.

Matching happens in memory, before the write: which functions each event
starts, which paused runs it resumes (claimed, so no other event or timer
can resume them too) and which runs it cancels. The store then writes each
event with all of that in one transaction (`NewEvent`), and only after the
commit are runs started and woken. If an event turns out to be a
duplicate, or the write fails, its claims are handed back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from connect.executor.waits import Watch
from connect.store.base import NewEvent
from protocol.payloads import Event


@dataclass
class IntakeItem:
    new: NewEvent
    event: Event
    #: Watches this event resumes, with the memo stored for each.
    claimed: list[tuple[Watch, bytes]] = field(default_factory=list)
    #: How many of `new.cancels` its cancel conditions matched; the store adds
    #: after them the runs singletons cancel (`NewEvent.gates`).
    matched_cancels: int = 0


@dataclass
class Intake:
    items: list[IntakeItem] = field(default_factory=list)

    @property
    def batch(self) -> list[NewEvent]:
        return [item.new for item in self.items]

    def __bool__(self) -> bool:
        return bool(self.items)
