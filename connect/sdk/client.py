"""The app's handle: identity, where the platform lives, event sending, function creation."""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import httpx
import tenacity

from connect.sdk import settings as settings_
from connect.sdk.errors import FunctionConfigError, SendEventsError
from connect.sdk.events import Event, encode_events, event_id_seed, normalize, parse_send_reply
from connect.sdk.flow import Batch, Concurrency, Debounce, Priority, RateLimit, Singleton, Throttle
from connect.sdk.function import Function, Handler
from connect.sdk.middleware import Chain, UninitializedMiddleware, send_through, send_through_sync
from connect.sdk.options import Cancel, Timeouts
from connect.sdk.serializer import NO_OUTPUT_TYPE, PydanticSerializer, Serializer
from connect.sdk.triggers import AnyTrigger
from connect.sdk.version import SDK_VERSION

#: Kept for code that reads them; the rules live in ``connect.sdk.settings``.
DEFAULT_API_BASE_URL: Final = settings_.DEV_API_BASE_URL
ENV_API_URL: Final = settings_.CONNECT_API_URL
ENV_SIGNING_KEY: Final = settings_.CONNECT_SIGNING_KEY
ENV_EVENT_KEY: Final = settings_.CONNECT_EVENT_KEY
DEFAULT_EVENT_KEY: Final = settings_.DEV_EVENT_KEY
SEND_TIMEOUT_SECONDS: Final = 30.0
"""Default timeout of one try of ``send`` (``request_timeout`` changes it)."""
SEND_ATTEMPTS: Final = 5
"""Tries of one send: the first and up to four retries on a network error or a 5xx answer."""


class _ServerError(Exception):
    """A 5xx answer: worth another try."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"event API answered {response.status_code}")
        self.response = response


# Retries as the official SDKs do: 0.1 s x 2^n plus up to 0.1 s of jitter.
_SEND_STOP = tenacity.stop_after_attempt(SEND_ATTEMPTS)
_SEND_WAIT = tenacity.wait_exponential(multiplier=0.1, exp_base=2) + tenacity.wait_random(0, 0.1)
_SEND_RETRY = tenacity.retry_if_exception_type((httpx.TransportError, _ServerError))


def _timeout_seconds(value: object) -> float:
    """``request_timeout`` as the official SDK reads it: an int is milliseconds."""
    if value is None:
        return SEND_TIMEOUT_SECONDS
    if isinstance(value, datetime.timedelta) and value.total_seconds() > 0:
        return value.total_seconds()
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value / 1000
    raise FunctionConfigError(f"Client: request_timeout: must be a positive int (ms) or timedelta, got {value!r}")


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 500:
        raise _ServerError(response)
    return response


class Client:
    """One app: its id, where the platform is, keys, a logger and a serializer.

    Written as the official SDK's ``Inngest`` client is (``Inngest`` is
    another name for it): ``Client(app_id="shop", is_production=False)``.
    Settings are resolved once, at construction, by one rule: an argument
    wins, then the ``CONNECT_*`` variable, then the official ``INNGEST_*``
    one, then the default (``connect.sdk.settings`` has the table and what
    ``is_production`` / ``INNGEST_DEV`` change); a bad one raises
    ``FunctionConfigError`` naming the argument or variable it came from
    (``Client: CONNECT_API_URL: must be an http:// or https:// URL with a
    host, got 'localhost:8288'``). The client holds no connections; each
    ``send`` opens and closes its own HTTP client, so one ``Client`` may be
    used from any thread or event loop.

    ``serializer`` converts typed outputs (``output_type=``); the default is
    ``PydanticSerializer``. ``request_timeout`` bounds each try of ``send``
    (an int is milliseconds, as in the official SDK; default 30 s). ``http_transport`` replaces httpx's network layer
    (tests pass an ``httpx.MockTransport``); an async transport serves
    ``send`` and a sync one ``send_sync``.
    """

    def __init__(
        self,
        app_id: str,
        *,
        api_base_url: str | None = None,
        app_version: str | None = None,
        env: str | None = None,
        event_api_base_url: str | None = None,
        event_key: str | None = None,
        is_production: bool | None = None,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        request_timeout: int | datetime.timedelta | None = None,
        serializer: Serializer | None = None,
        signing_key: str | None = None,
        http_transport: httpx.AsyncBaseTransport | httpx.BaseTransport | None = None,
        middleware: Sequence[UninitializedMiddleware] | None = None,
    ) -> None:
        settings = settings_.resolve(
            app_id=app_id,
            is_production=is_production,
            api_base_url=api_base_url,
            event_api_base_url=event_api_base_url,
            signing_key=signing_key,
            event_key=event_key,
            env=env,
            app_version=app_version,
            environ=os.environ,
        )
        self.settings: Final = settings
        self.app_id: Final = settings.app_id
        #: False in development (a local ``connect dev``, keys optional), True in production.
        self.is_production: Final = settings.is_production
        self.api_base_url: Final = settings.api_base_url
        self.event_api_base_url: Final = settings.event_api_base_url
        self.signing_key: Final = settings.signing_key
        #: Tried by the worker when the platform refuses ``signing_key`` (key rotation).
        self.signing_key_fallback: Final = settings.signing_key_fallback
        self.event_key: Final = settings.event_key
        self.env: Final = settings.env
        self.app_version: Final = settings.app_version
        self.logger: Final = logger or logging.getLogger("connect.sdk")
        self.serializer: Final[Serializer] = serializer or PydanticSerializer()
        self._timeout = _timeout_seconds(request_timeout)
        self._transport = http_transport
        #: Every function created with this client, in creation order; what
        #: `connect worker module:client` serves.
        self.functions: list[Function] = []
        #: Middleware run on every request of this client's functions, before
        #: the function's own, and around ``send`` (see ``connect.sdk.middleware``).
        self.middleware: list[UninitializedMiddleware] = list(middleware or [])

    def add_middleware(self, middleware: UninitializedMiddleware) -> None:
        """Append one middleware to the client's (it applies from the next request on)."""
        self.middleware = [*self.middleware, middleware]

    @property
    def event_url(self) -> str:
        """Where ``send`` posts: ``<event_api_base_url>/e/<event_key>``."""
        if self.event_key is None:
            raise SendEventsError(
                f"no event key: pass event_key, or set {settings_.CONNECT_EVENT_KEY} or {settings_.INNGEST_EVENT_KEY} "
                "(production mode has no default)"
            )
        return f"{self.event_api_base_url}/e/{self.event_key}"

    def create_function(
        self,
        *,
        fn_id: str,
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
    ) -> Callable[[Handler], Function]:
        """Decorator turning a handler into a ``Function``.

        Two handler styles, told apart by the handler's parameters: one
        (``async def f(ctx)``, ``ctx.step`` and ``ctx.group`` as in the
        official SDK) or two (``async def f(ctx, step)``); a plain ``def``
        handler gets a ``ContextSync`` with ``StepSync`` / ``GroupSync``
        tools and runs in a worker thread (see ``connect.sdk.handlers``).
        ``output_type`` declares the type the handler returns, serialized
        with the client's serializer (``connect.sdk.serializer``).
        ``trigger`` is one trigger or a list (any of them starts a run).
        ``retries`` (0 to 20) applies to each step and to the function body; ``None``
        leaves the server default. ``cancel`` lists events that cancel a run,
        ``timeouts`` bounds how long a run may wait to start and take to
        finish, and ``on_failure`` (a handler like the main one) runs once
        for each run that fails for good, with the ``inngest/function.failed``
        event (``ctx.event.data`` holds ``error``, ``event``, ``function_id``
        and ``run_id``). Flow control (``concurrency``, ``throttle``,
        ``rate_limit``, ``debounce``, ``batch_events``, ``priority``,
        ``idempotency``, ``singleton``) takes the types of
        ``connect.sdk.flow``, named and shaped as in the official SDK.
        ``middleware`` runs after the client's on each request of this
        function (see ``connect.sdk.middleware``). Options
        are validated here, so a mistake raises ``FunctionConfigError`` at
        import time rather than at run time.
        """

        def decorate(handler: Handler) -> Function:
            fn = Function(
                fn_id=fn_id,
                handler=handler,
                trigger=trigger,
                retries=retries,
                name=name,
                output_type=output_type,
                cancel=cancel,
                timeouts=timeouts,
                on_failure=on_failure,
                concurrency=concurrency,
                throttle=throttle,
                rate_limit=rate_limit,
                debounce=debounce,
                batch_events=batch_events,
                priority=priority,
                idempotency=idempotency,
                singleton=singleton,
                middleware=middleware,
            )
            if any(existing.id == fn.id for existing in self.functions):
                raise FunctionConfigError(f"app {self.app_id!r} already has a function with id {fn.id!r}")
            self.functions.append(fn)
            return fn

        return decorate

    async def send(self, events: Event | Sequence[Event], *, skip_middleware: bool = False) -> list[str]:
        """POST events to the event API; returns their ids in order.

        A network failure or a 5xx answer is retried (``SEND_ATTEMPTS`` tries
        in all) with the same body and the same ``X-Inngest-Event-Id-Seed``,
        so the server names the events the same way each time and stores them
        once, even when an earlier try arrived and only its answer was lost.
        Raises ``SendEventsError`` once the tries are spent, or at once on a
        4xx answer (with the server's message). Inside a function, use
        ``step.send_event``, so that a retry of the *step* does not send twice.
        The client's middleware sees the events first (``before_send_events``)
        and the result after (``after_send_events``), unless ``skip_middleware``.
        """
        batch = normalize(events)
        if not batch:
            return []
        if self.middleware and not skip_middleware:
            return await send_through(Chain(self, None, self.middleware), batch, self._post)
        return await self._post(batch)

    async def _post(self, batch: list[Event]) -> list[str]:
        body, headers = self._request(batch)
        url = self.event_url
        transport = self._transport if isinstance(self._transport, httpx.AsyncBaseTransport) else None
        try:
            async with httpx.AsyncClient(timeout=self._timeout, transport=transport) as http:
                async for attempt in tenacity.AsyncRetrying(
                    stop=_SEND_STOP, wait=_SEND_WAIT, retry=_SEND_RETRY, reraise=True
                ):
                    with attempt:
                        response = _checked(await http.post(url, content=body, headers=headers))
        except _ServerError as exc:
            response = exc.response
        except httpx.HTTPError as exc:
            raise SendEventsError(f"could not reach the event API at {url}: {exc}") from exc
        return parse_send_reply(response.status_code, response.content)

    def send_sync(self, events: Event | Sequence[Event], *, skip_middleware: bool = False) -> list[str]:
        """Blocking ``send`` (with the same retries and middleware), for sync code and sync handlers."""
        batch = normalize(events)
        if not batch:
            return []
        if self.middleware and not skip_middleware:
            return send_through_sync(Chain(self, None, self.middleware), batch, self._post_sync)
        return self._post_sync(batch)

    def _post_sync(self, batch: list[Event]) -> list[str]:
        body, headers = self._request(batch)
        url = self.event_url
        transport = self._transport if isinstance(self._transport, httpx.BaseTransport) else None
        try:
            with httpx.Client(timeout=self._timeout, transport=transport) as http:
                for attempt in tenacity.Retrying(stop=_SEND_STOP, wait=_SEND_WAIT, retry=_SEND_RETRY, reraise=True):
                    with attempt:
                        response = _checked(http.post(url, content=body, headers=headers))
        except _ServerError as exc:
            response = exc.response
        except httpx.HTTPError as exc:
            raise SendEventsError(f"could not reach the event API at {url}: {exc}") from exc
        return parse_send_reply(response.status_code, response.content)

    def _request(self, batch: list[Event]) -> tuple[bytes, dict[str, str]]:
        now_ms = time.time_ns() // 1_000_000
        headers = {
            "content-type": "application/json",
            "user-agent": SDK_VERSION,
            "x-inngest-sdk": SDK_VERSION,
            "x-inngest-event-id-seed": event_id_seed(now_ms),
        }
        if self.env is not None:
            headers["x-inngest-env"] = self.env
        return encode_events(batch, now_ms), headers

    def __repr__(self) -> str:
        return f"Client(app_id={self.app_id!r}, api_base_url={self.api_base_url!r})"


#: The official SDK's name for the client: ``inngest.Inngest(app_id=...)`` ports as ``connect.Inngest(app_id=...)``.
Inngest = Client
