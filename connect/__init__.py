"""Durable Python functions served by outbound WebSocket workers.

from connect import Client, TriggerEvent, Context, Step, connect
"""

from connect.sdk import (
    Cancel,
    Client,
    Context,
    Event,
    Function,
    FunctionConfigError,
    NonRetriableError,
    ParallelMode,
    RetryAfterError,
    SendEventsError,
    Step,
    StepError,
    StepSync,
    Timeouts,
    TriggerCron,
    TriggerEvent,
)
from connect.worker import ConnectionState, WorkerConnection, connect

__all__ = [
    "Cancel",
    "Client",
    "ConnectionState",
    "Context",
    "Event",
    "Function",
    "FunctionConfigError",
    "NonRetriableError",
    "ParallelMode",
    "RetryAfterError",
    "SendEventsError",
    "Step",
    "StepError",
    "StepSync",
    "Timeouts",
    "TriggerCron",
    "TriggerEvent",
    "WorkerConnection",
    "connect",
]
