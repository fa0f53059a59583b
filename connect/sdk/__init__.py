"""The authoring SDK: write durable functions, and execute them one call request at a time.

Mirrors the Inngest Python SDK's user-facing API, so existing functions port by
changing imports (``import connect as inngest``): ``Inngest`` is ``Client``, both
handler styles (``connect.sdk.handlers``), configuration from ``INNGEST_*`` variables
after ours (``connect.sdk.settings``), typed outputs (``connect.sdk.serializer``).
``connect.sdk.testing`` runs a function in a unit test without a server, as the
official ``inngest.experimental.mocked``. ``connect.sdk.execution.execute`` is the
engine a worker calls.
"""

from connect.sdk.client import Client, Inngest
from connect.sdk.context import Context, ContextSync
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
from connect.sdk.group import Group, GroupSync
from connect.sdk.middleware import (
    Middleware,
    MiddlewareSync,
    SendEventsResult,
    StepMemos,
    TransformOutputResult,
)
from connect.sdk.options import Cancel, Timeouts
from connect.sdk.serializer import PydanticSerializer, Serializer
from connect.sdk.step import ParallelMode, Step, StepSync
from connect.sdk.triggers import TriggerCron, TriggerEvent

__all__ = [
    "Batch",
    "Cancel",
    "Client",
    "Concurrency",
    "Context",
    "ContextSync",
    "Debounce",
    "Event",
    "Function",
    "FunctionConfigError",
    "Group",
    "GroupSync",
    "Inngest",
    "Middleware",
    "MiddlewareSync",
    "NonRetriableError",
    "ParallelMode",
    "Priority",
    "PydanticSerializer",
    "RateLimit",
    "RetryAfterError",
    "SendEventsError",
    "SendEventsResult",
    "Serializer",
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
