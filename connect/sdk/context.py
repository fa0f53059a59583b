"""What a handler is told about the run it is executing."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from protocol.payloads import Event


@dataclass
class Context:
    """The run as seen by one request; rebuilt from the executor's request every time.

    ``attempt`` is 0-based and counts retries of the current request (it resets
    after each completed step). ``events`` holds more than one event only for
    batched functions; ``event`` is the first. ``request_id`` and ``job_id``
    are empty when the transport did not provide them.
    """

    event: Event
    events: list[Event]
    run_id: str
    attempt: int
    request_id: str
    job_id: str
    logger: logging.Logger
