"""Durable Python functions served by outbound WebSocket workers.

from connect import Client, TriggerEvent, Context, Step, connect
"""

from connect.sdk import (
    Client,
    Context,
    Event,
    Function,
    FunctionConfigError,
    NonRetriableError,
    RetryAfterError,
    SendEventsError,
    Step,
    StepError,
    StepSync,
    TriggerCron,
    TriggerEvent,
)
from connect.worker import ConnectionState, WorkerConnection, connect

__all__ = [
    "Client",
    "ConnectionState",
    "Context",
    "Event",
    "Function",
    "FunctionConfigError",
    "NonRetriableError",
    "RetryAfterError",
    "SendEventsError",
    "Step",
    "StepError",
    "StepSync",
    "TriggerCron",
    "TriggerEvent",
    "WorkerConnection",
    "connect",
]
