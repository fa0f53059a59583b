"""What a handler is told about the run it is executing."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from protocol.payloads import Event


@dataclass
class Context:
    """The run as seen by one request; rebuilt from the executor's request every time.

    ``attempt`` is 0-based and counts retries of the current request (it resets
    after each completed step). ``events`` are the run's events, read from the
    request's ``events`` as the official SDK reads them: the triggering event
    alone for most runs, a batch's events in arrival order for a function with
    ``batch_events``; ``event`` is the first of them. ``request_id`` and
    ``job_id`` are empty when the transport did not provide them.
    """

    event: Event
    events: list[Event]
    run_id: str
    attempt: int
    request_id: str
    job_id: str
    logger: logging.Logger
