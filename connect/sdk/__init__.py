"""The authoring SDK: write durable functions, and execute them one call request at a time.

Mirrors the Inngest Python SDK's user-facing API, so existing functions port by
changing imports. ``connect.sdk.execution.execute`` is the engine a worker calls.
"""

from connect.sdk.client import Client
from connect.sdk.context import Context
from connect.sdk.errors import (
    FunctionConfigError,
    NonRetriableError,
    RetryAfterError,
    SendEventsError,
    StepError,
)
from connect.sdk.events import Event
from connect.sdk.flow import Batch, Concurrency, Debounce, Priority, RateLimit, Singleton, Throttle
from connect.sdk.function import Function, functions_json
from connect.sdk.middleware import (
    Middleware,
    MiddlewareSync,
    SendEventsResult,
    StepMemos,
    TransformOutputResult,
)
from connect.sdk.options import Cancel, Timeouts
from connect.sdk.step import ParallelMode, Step, StepSync
from connect.sdk.triggers import TriggerCron, TriggerEvent

__all__ = [
    "Batch",
    "Cancel",
    "Client",
    "Concurrency",
    "Context",
    "Debounce",
    "Event",
    "Function",
    "FunctionConfigError",
    "Middleware",
    "MiddlewareSync",
    "NonRetriableError",
    "ParallelMode",
    "Priority",
    "RateLimit",
    "RetryAfterError",
    "SendEventsError",
    "SendEventsResult",
    "Singleton",
    "Step",
    "StepError",
    "StepMemos",
    "StepSync",
    "Throttle",
    "Timeouts",
    "TransformOutputResult",
    "TriggerCron",
    "TriggerEvent",
    "functions_json",
]
