"""The typed ways a dispatch fails.

They are typed so the executor can tell "wait for a worker" and "the worker
was lost" (no attempt burnt) from "the step failed" (an attempt burnt).
"""

from __future__ import annotations


class DispatchError(Exception):
    """Base of the typed dispatch failures; `code` is a stable syscode."""

    code = "connect_dispatch_failed"


class NoWorker(DispatchError):
    """No ready connection serves this app and function. Wait; no attempt burnt."""

    code = "connect_no_healthy_connection"


class AtCapacity(DispatchError):
    """Every suitable worker is at its max_worker_concurrency. Wait; no attempt burnt."""

    code = "connect_all_workers_at_capacity"


class WorkerStoppedResponding(DispatchError):
    """The request's lease lapsed before a reply was stored: its worker was
    lost (killed, cut off, or gone silent). Not the step's failure: the
    executor dispatches the same request again without spending an attempt,
    a bounded number of times (`max_lease_lapses`)."""

    code = "connect_worker_stopped_responding"
