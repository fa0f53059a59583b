"""A durable function: its handler plus the configuration it registers with."""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TypeAlias

import msgspec

from connect.sdk.context import Context, ContextSync
from connect.sdk.flow import Batch, Concurrency, Debounce, Priority, RateLimit, Singleton, Throttle
from connect.sdk.handlers import is_async_callable, takes_step
from connect.sdk.middleware import UninitializedMiddleware
from connect.sdk.options import Cancel, FunctionOptions, Timeouts
from connect.sdk.serializer import NO_OUTPUT_TYPE
from connect.sdk.step import Step, StepSync
from connect.sdk.triggers import AnyTrigger, TriggerEvent
from protocol.payloads import CancelConfig, FunctionConfig, Retries, Runtime, StepConfig, TimeoutsConfig

AsyncHandler: TypeAlias = Callable[[Context, Step], Awaitable[Any]] | Callable[[Context], Awaitable[Any]]
# `(Context, StepSync)` is how sync handlers were annotated before `ContextSync`: they
# are still accepted (they get a `ContextSync`, which has every field a `Context` has).
SyncHandler: TypeAlias = (
    Callable[[ContextSync, StepSync], Any] | Callable[[Context, StepSync], Any] | Callable[[ContextSync], Any]
)
Handler: TypeAlias = AsyncHandler | SyncHandler

# The one pseudo-step every function registers; requests naming it are discovery requests.
ROOT_STEP_ID: Final = "step"
#: An ``on_failure`` handler is registered as ``<fully-qualified id>-failure``.
FAILURE_SUFFIX: Final = "-failure"
#: The event that triggers ``on_failure`` handlers.
FUNCTION_FAILED_EVENT: Final = "inngest/function.failed"


class Function:
    """A handler plus its validated, immutable options.

    Construction checks every option (``FunctionOptions``) and raises
    ``FunctionConfigError`` naming the option and what was wrong, so a bad
    function never reaches registration. ``id`` is the local id; on the
    wire a function is known by ``"<app_id>-<id>"``.
    """

    def __init__(
        self,
        *,
        fn_id: str,
        handler: Handler,
        trigger: AnyTrigger | Sequence[AnyTrigger],
        retries: int | None = None,
        name: str | None = None,
        output_type: object = NO_OUTPUT_TYPE,
        cancel: Sequence[Cancel] | None = None,
        timeouts: Timeouts | None = None,
        on_failure: Handler | None = None,
        concurrency: Sequence[Concurrency] | None = None,
        throttle: Throttle | None = None,
        rate_limit: RateLimit | None = None,
        debounce: Debounce | None = None,
        batch_events: Batch | None = None,
        priority: Priority | None = None,
        idempotency: str | None = None,
        singleton: Singleton | None = None,
        middleware: Sequence[UninitializedMiddleware] | None = None,
    ) -> None:
        options = FunctionOptions.checked(
            fn_id=fn_id,
            name=name,
            trigger=trigger,
            retries=retries,
            cancel=cancel,
            timeouts=timeouts,
            concurrency=concurrency,
            throttle=throttle,
            rate_limit=rate_limit,
            debounce=debounce,
            batch_events=batch_events,
            priority=priority,
            idempotency=idempotency,
            singleton=singleton,
        )
        self._takes_step = takes_step(fn_id, handler)
        self._options = options
        self._output_type = output_type

        self._id = fn_id
        self._name = name or fn_id
        self._triggers = options.triggers
        self._retries = retries
        self._handler = handler
        self._is_async = is_async_callable(handler)
        self._cancel: tuple[Cancel, ...] = options.cancel
        self._timeouts = timeouts
        self._middleware: tuple[UninitializedMiddleware, ...] = tuple(middleware or ())
        self._on_failure: Function | None = None
        if on_failure is not None:
            takes_step(f"{fn_id} on_failure", on_failure)
            # Registered as its own function, triggered by the failure event of
            # this one (the expression is added in `failure_config`); one attempt only.
            self._on_failure = Function(
                fn_id=f"{fn_id}{FAILURE_SUFFIX}",
                handler=on_failure,
                trigger=TriggerEvent(event=FUNCTION_FAILED_EVENT),
                retries=0,
                name=f"{self._name} (failure)",
                middleware=middleware,
            )

    @property
    def id(self) -> str:
        return self._id

    @property
    def name(self) -> str:
        return self._name

    @property
    def triggers(self) -> tuple[AnyTrigger, ...]:
        return self._triggers

    @property
    def retries(self) -> int | None:
        """Retries per step and per request after the first attempt; ``None`` = server default."""
        return self._retries

    @property
    def handler(self) -> Handler:
        return self._handler

    @property
    def takes_step(self) -> bool:
        """Whether the handler is called ``(ctx, step)`` rather than ``(ctx)`` (``connect.sdk.handlers``)."""
        return self._takes_step

    @property
    def output_type(self) -> object:
        """The declared type of the handler's return value, or ``NO_OUTPUT_TYPE``."""
        return self._output_type

    @property
    def is_async(self) -> bool:
        """``async def`` handlers run on the event loop; others run in a worker thread."""
        return self._is_async

    @property
    def cancel(self) -> tuple[Cancel, ...]:
        return self._cancel

    @property
    def timeouts(self) -> Timeouts | None:
        return self._timeouts

    @property
    def options(self) -> FunctionOptions:
        """Every option as validated, flow control included (``options.throttle``, ...)."""
        return self._options

    @property
    def middleware(self) -> tuple[UninitializedMiddleware, ...]:
        """This function's own middleware, run after the client's on each request."""
        return self._middleware

    @property
    def on_failure(self) -> Function | None:
        """The ``on_failure`` handler as a function of its own (id ``<id>-failure``), if any."""
        return self._on_failure

    def fully_qualified_id(self, app_id: str) -> str:
        return f"{app_id}-{self._id}"

    def config(self, app_id: str) -> FunctionConfig:
        """The registration config; its runtime points at the connect transport."""
        fq_id = self.fully_qualified_id(app_id)
        query = urllib.parse.urlencode({"fnId": fq_id, "stepId": ROOT_STEP_ID})
        return FunctionConfig(
            id=fq_id,
            name=self._name,
            triggers=[t.to_wire() for t in self._triggers],
            steps={
                ROOT_STEP_ID: StepConfig(
                    id=ROOT_STEP_ID,
                    name=ROOT_STEP_ID,
                    runtime=Runtime(type="ws", url=f"wss://connect?{query}"),
                    retries=None if self._retries is None else Retries(attempts=self._retries),
                )
            },
            cancel=[msgspec.convert(c.to_wire(), CancelConfig) for c in self._cancel] or None,
            timeouts=(
                msgspec.convert(self._timeouts.to_wire(), TimeoutsConfig)
                if self._timeouts is not None and self._timeouts.to_wire()
                else None
            ),
            **_flow_config(self._options),
        )

    def configs(self, app_id: str) -> list[FunctionConfig]:
        """This function's config, followed by its ``on_failure`` companion's if it has one.

        The companion is triggered by ``inngest/function.failed`` events of
        this function only (``event.data.function_id == '<fq id>'``).
        """
        configs = [self.config(app_id)]
        if self._on_failure is not None:
            companion = self._on_failure.config(app_id)
            companion.triggers[0].expression = f"event.data.function_id == '{self.fully_qualified_id(app_id)}'"
            companion.cancel = []
            configs.append(companion)
        return configs

    def __repr__(self) -> str:
        return f"Function(id={self._id!r}, name={self._name!r})"


def functions_json(app_id: str, fns: Iterable[Function]) -> bytes:
    """The JSON array of configs sent in WORKER_CONNECT (``on_failure`` companions
    included), with every ``null`` removed."""
    return msgspec.json.encode(
        [_drop_nulls(msgspec.to_builtins(config)) for fn in fns for config in fn.configs(app_id)]
    )


def resolve(functions: Mapping[str, Function], slug: str) -> Function | None:
    """The function a request names: one of ``functions`` (keyed by
    fully-qualified id), or the ``on_failure`` companion of one."""
    fn = functions.get(slug)
    if fn is None and slug.endswith(FAILURE_SUFFIX):
        parent = functions.get(slug[: -len(FAILURE_SUFFIX)])
        if parent is not None:
            fn = parent.on_failure
    return fn


def _flow_config(options: FunctionOptions) -> dict[str, Any]:
    """The flow-control fields of the registration config, as the official Python SDK sends them
    (``None`` for an option not set, left out when the config is encoded)."""
    return {
        "concurrency": [c.to_wire() for c in options.concurrency] or None,
        "throttle": None if options.throttle is None else options.throttle.to_wire(),
        "rateLimit": None if options.rate_limit is None else options.rate_limit.to_wire(),
        "debounce": None if options.debounce is None else options.debounce.to_wire(),
        "batchEvents": None if options.batch_events is None else options.batch_events.to_wire(),
        "priority": None if options.priority is None else options.priority.to_wire(),
        "idempotency": options.idempotency,
        "singleton": None if options.singleton is None else options.singleton.to_wire(),
    }


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value
