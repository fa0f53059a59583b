"""What the apps registered, as the executor serves it: functions served,
functions refused (and why), and options registered that it does not honour.

An SDK registers more than this executor implements. It runs retries,
`cancel`, `timeouts`, event triggers with expressions, cron triggers,
`onFailure` functions, and all flow control: throttle, rate limit,
idempotency and singleton when a run starts (`connect.executor.start_limits`),
debounce and event batches (`connect.executor.held_starts`), and
`concurrency` limits with `priority` while steps run
(`connect.executor.concurrency`). Cron jitter is kept as registered, typed in
`FunctionConfig`, but not enforced yet; the function is still served and its
runs start as if the option were not there.
Nothing is silently ignored: each such option is named in one warning per
function when its app's registration changes (a fleet of workers
reconnecting with the same app logs nothing new), and in `GET /v1/functions`.

Refusals are kept in memory: a restarted server learns them again from the
next worker that connects with the app.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import msgspec

from protocol.payloads import FunctionConfig, RefusedFunction

log = logging.getLogger(__name__)

#: Top-level options an SDK may register that the executor does not enforce.
NOT_HONOURED: Final[tuple[tuple[str, Callable[[FunctionConfig], Any]], ...]] = (
    # Every top-level flow-control option is honoured; cron jitter is checked
    # per trigger in `not_honoured`.
)

_encode: Final = msgspec.json.Encoder().encode


def not_honoured(fn: FunctionConfig, unknown: Sequence[str] = ()) -> dict[str, Any]:
    """The options of `fn` the executor does not honour, by wire name, with
    the values registered (JSON-ready). `unknown` names fields no known SDK
    sends; their values were not kept, so they map to None."""
    found: dict[str, Any] = {}
    for name, get in NOT_HONOURED:
        value = get(fn)
        if value is not None:
            found[name] = msgspec.to_builtins(value)
    for i, trigger in enumerate(fn.triggers):
        if trigger.cron is not None and trigger.jitter:
            found[f"triggers[{i}].jitter"] = trigger.jitter
    for name in unknown:
        found[name] = None
    return found


class FunctionView(msgspec.Struct, frozen=True):
    """One registered function as `GET /v1/functions` shows it."""

    id: str
    app: str
    name: str | None
    triggers: list[dict[str, Any]]
    status: Literal["active", "refused"]
    reason: str | None
    not_honoured: dict[str, Any]
    #: The options registered, as the SDK sent them (`retries` from the function's step).
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class AppView(msgspec.Struct, frozen=True):
    """One app as `GET /v1/apps` shows it: its version and every function it registered."""

    name: str
    version: str | None
    functions: list[FunctionView]


#: The fields of a registered function that are not among its options.
_NOT_OPTIONS = frozenset({"id", "name", "triggers", "steps"})


def options_of(fn: FunctionConfig) -> dict[str, Any]:
    options: dict[str, Any] = {k: v for k, v in msgspec.to_builtins(fn).items() if k not in _NOT_OPTIONS}
    if fn.retries is not None:
        options["retries"] = fn.retries
    return options


class Registration(msgspec.Struct, frozen=True):
    """What one app registered: the functions served, those refused, and
    per function the fields no known SDK sends."""

    app_name: str
    app_version: str | None
    functions: Sequence[FunctionConfig]
    refused: Sequence[RefusedFunction] = ()
    unknown: dict[str, list[str]] | None = None

    def fingerprint(self) -> bytes:
        return _encode([list(self.functions), list(self.refused), self.unknown or {}])


class _App(msgspec.Struct, frozen=True):
    version: str | None
    fingerprint: bytes
    views: list[FunctionView]


class Registry:
    """The latest registration of each app, for logs and the API."""

    def __init__(self) -> None:
        self._apps: dict[str, _App] = {}

    def unchanged(self, registration: Registration) -> bool:
        """True when the app registered exactly this last time."""
        known = self._apps.get(registration.app_name)
        if known is None or known.version != registration.app_version:
            return False
        return known.fingerprint == registration.fingerprint()

    def record(self, registration: Registration) -> None:
        """Remember what the app registered, and log a warning per refused
        function and per function with options not honoured."""
        app_name = registration.app_name
        unknown = registration.unknown or {}
        views: list[FunctionView] = []
        for fn in registration.functions:
            options = not_honoured(fn, unknown.get(fn.id, ()))
            if options:
                log.warning(
                    "app %s, function %s: registered options this executor does not honour yet "
                    "(the function runs without them): %s",
                    app_name,
                    fn.id,
                    ", ".join(f"{k}={_encode(v).decode()}" for k, v in options.items()),
                )
            views.append(
                FunctionView(
                    id=fn.id,
                    app=app_name,
                    name=fn.name,
                    triggers=[msgspec.to_builtins(t) for t in fn.triggers],
                    status="active",
                    reason=None,
                    not_honoured=options,
                    options=options_of(fn),
                )
            )
        for item in registration.refused:
            log.warning("app %s, function %s: refused, not served: %s", app_name, item.id, item.reason)
            views.append(FunctionView(item.id, app_name, item.name, [], "refused", item.reason, {}))
        self._apps[app_name] = _App(registration.app_version, registration.fingerprint(), views)

    def refusal(self, function_id: str) -> str | None:
        """Why function `function_id` was refused, if it was."""
        for app in self._apps.values():
            for view in app.views:
                if view.id == function_id and view.status == "refused":
                    return view.reason
        return None

    def apps(self) -> list[AppView]:
        """Every app, by name, with its functions by id."""
        return [
            AppView(name, app.version, sorted(app.views, key=lambda v: v.id))
            for name, app in sorted(self._apps.items())
        ]

    def views(self) -> list[FunctionView]:
        """Every function of every app, by app then id."""
        return sorted((v for app in self._apps.values() for v in app.views), key=lambda v: (v.app, v.id))
