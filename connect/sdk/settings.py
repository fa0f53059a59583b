"""Where a client's settings come from: arguments, ``CONNECT_*`` and ``INNGEST_*`` variables, defaults.

One rule for every setting: **the argument wins, then our ``CONNECT_*``
variable, then the official SDK's ``INNGEST_*`` one, then the default**. So
code and environments written for the official Inngest Python SDK work
unchanged, and a ``CONNECT_*`` variable set for this platform is never
overridden by an ``INNGEST_*`` one left in the environment.

The mode (``is_production``) decides the defaults, as in the official SDK:

- development (``is_production=False``, or ``INNGEST_DEV`` set to anything
  but ``0``/``false``, or neither given): the platform is a local
  ``connect dev`` at ``http://127.0.0.1:8288`` unless a URL is given, keys
  are optional (the event key defaults to ``dev``, which ``connect dev``
  accepts), and a URL-looking ``INNGEST_DEV`` (one with ``.`` or ``:``) is
  also where the platform is.
- production (``is_production=True``, or ``INNGEST_DEV=0``/``false``): the
  platform's URL and a signing key are required (construction raises
  naming the argument and variables that give them), and ``send`` raises
  without an event key.

Unlike the official SDK, neither argument nor variable means development: the
official default (Inngest Cloud) does not exist for a self-hosted platform.

Every value is checked here; a bad one raises ``FunctionConfigError`` naming
where it came from (``Client: INNGEST_BASE_URL: must be an http:// or
https:// URL with a host, got 'nowhere'``). Pure: the environment is passed in.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from connect.sdk.errors import FunctionConfigError

DEV_API_BASE_URL: Final = "http://127.0.0.1:8288"
DEV_EVENT_KEY: Final = "dev"

CONNECT_API_URL: Final = "CONNECT_API_URL"
CONNECT_SIGNING_KEY: Final = "CONNECT_SIGNING_KEY"
CONNECT_SIGNING_KEY_FALLBACK: Final = "CONNECT_SIGNING_KEY_FALLBACK"
CONNECT_EVENT_KEY: Final = "CONNECT_EVENT_KEY"

INNGEST_DEV: Final = "INNGEST_DEV"
INNGEST_BASE_URL: Final = "INNGEST_BASE_URL"
INNGEST_API_BASE_URL: Final = "INNGEST_API_BASE_URL"
INNGEST_EVENT_API_BASE_URL: Final = "INNGEST_EVENT_API_BASE_URL"
INNGEST_SIGNING_KEY: Final = "INNGEST_SIGNING_KEY"
INNGEST_SIGNING_KEY_FALLBACK: Final = "INNGEST_SIGNING_KEY_FALLBACK"
INNGEST_EVENT_KEY: Final = "INNGEST_EVENT_KEY"
INNGEST_ENV: Final = "INNGEST_ENV"

_NOT_A_URL: Final = "must be an http:// or https:// URL with a host"
_KEY_PREFIX: Final = re.compile(r"^signkey-\w+-")


@dataclass(frozen=True)
class ClientSettings:
    """A client's settings once resolved; ``sources`` names where each came from."""

    app_id: str
    is_production: bool
    api_base_url: str
    event_api_base_url: str
    signing_key: str | None
    signing_key_fallback: str | None
    event_key: str | None
    env: str | None
    app_version: str | None


def _fail(source: str, message: str) -> FunctionConfigError:
    return FunctionConfigError(f"Client: {source}: {message}")


def _checked_url(source: str, value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _fail(source, f"{_NOT_A_URL}, got {value!r}")
    return value.rstrip("/")


def _official_url(source: str, value: str, production: bool) -> str:
    """An ``INNGEST_*`` URL as the official SDK reads it: a missing scheme is
    ``https://`` in production and ``http://`` in development."""
    value = value.strip()
    if "://" not in value:
        if "." not in value and ":" not in value:  # the official SDK's test for "a URL"
            raise _fail(source, f"{_NOT_A_URL}, got {value!r}")
        value = f"{'https' if production else 'http'}://{value}"
    return _checked_url(source, value)


def _text(source: str, value: object) -> str:
    if not isinstance(value, str):
        raise _fail(source, f"must be a string, got {value!r}")
    if not value.strip():
        raise _fail(source, f"must be a non-empty string, got {value!r}")
    return value


def _first(
    argument: tuple[str, object | None], environ: Mapping[str, str], *variables: str
) -> tuple[str, object] | None:
    """The first of the argument and the variables that is set (an empty variable counts as unset)."""
    name, value = argument
    if value is not None:
        return name, value
    for variable in variables:
        found = environ.get(variable)
        if found:
            return variable, found
    return None


def _mode(is_production: object, environ: Mapping[str, str]) -> tuple[bool, str | None]:
    """(production?, the dev server origin ``INNGEST_DEV`` names, if it names one)."""
    if is_production is not None and not isinstance(is_production, bool):
        raise _fail("is_production", f"must be True or False, got {is_production!r}")
    dev = environ.get(INNGEST_DEV, "").strip()
    dev_url = dev if ("." in dev or ":" in dev) else None
    if is_production is not None:
        return is_production, dev_url
    if dev.lower() in ("0", "false"):
        return True, None
    return False, dev_url


def _signing_key(source: str, value: object) -> str:
    """A signing key is ``[signkey-<env>-]<hex>``, as the platform's (``connect serve``) keys are."""
    key = _text(source, value).strip()
    bare = _KEY_PREFIX.sub("", key)
    if len(bare) < 16 or re.fullmatch(r"(?:[0-9a-fA-F]{2})+", bare) is None:
        shown = repr(key[:12] + "...") if len(key) > 12 else repr(key)
        problem = "must be hexadecimal, at least 16 digits (optionally prefixed signkey-<env>-)"
        raise _fail(source, f"{problem}, got {shown}")
    return key


def resolve(
    *,
    app_id: object,
    is_production: object,
    api_base_url: object,
    event_api_base_url: object,
    signing_key: object,
    event_key: object,
    env: object,
    app_version: object,
    environ: Mapping[str, str],
) -> ClientSettings:
    """Resolve every setting (see the module doc for the rule and the modes)."""
    app = _text("app_id", app_id)
    production, dev_url = _mode(is_production, environ)

    found = _first(("api_base_url", api_base_url), environ, CONNECT_API_URL)
    if found is not None:
        api = _checked_url(found[0], _text(found[0], found[1]))
    else:
        official = _first(("", None), environ, INNGEST_API_BASE_URL, INNGEST_BASE_URL)
        if official is not None:
            api = _official_url(official[0], str(official[1]), production)
        elif dev_url is not None:
            api = _official_url(INNGEST_DEV, dev_url, production)
        elif production:
            raise _fail(
                "api_base_url",
                f"production needs the platform's URL: pass api_base_url, or set {CONNECT_API_URL} "
                f"or {INNGEST_BASE_URL} (or set is_production=False / {INNGEST_DEV}=1 for a local connect dev)",
            )
        else:
            api = DEV_API_BASE_URL

    found = _first(("event_api_base_url", event_api_base_url), environ)
    if found is not None:
        events = _checked_url(found[0], _text(found[0], found[1]))
    elif environ.get(INNGEST_EVENT_API_BASE_URL):
        events = _official_url(INNGEST_EVENT_API_BASE_URL, environ[INNGEST_EVENT_API_BASE_URL], production)
    else:
        events = api  # the event API is served by the same API port

    found = _first(("signing_key", signing_key), environ, CONNECT_SIGNING_KEY, INNGEST_SIGNING_KEY)
    key = None if found is None else _signing_key(found[0], found[1])
    if key is None and production:
        raise _fail(
            "signing_key",
            f"production needs a signing key: pass signing_key, or set {CONNECT_SIGNING_KEY} or {INNGEST_SIGNING_KEY} "
            f"(or set is_production=False / {INNGEST_DEV}=1 for a local connect dev)",
        )
    found = _first(("", None), environ, CONNECT_SIGNING_KEY_FALLBACK, INNGEST_SIGNING_KEY_FALLBACK)
    fallback = None if found is None else _signing_key(found[0], found[1])

    found = _first(("event_key", event_key), environ, CONNECT_EVENT_KEY, INNGEST_EVENT_KEY)
    if found is not None:
        ekey: str | None = _text(found[0], found[1])
    else:
        ekey = None if production else DEV_EVENT_KEY

    found = _first(("env", env), environ, INNGEST_ENV)
    env_name = None if found is None else _text(found[0], found[1])
    version = None if app_version is None else _text("app_version", app_version)
    return ClientSettings(
        app_id=app,
        is_production=production,
        api_base_url=api,
        event_api_base_url=events,
        signing_key=key,
        signing_key_fallback=fallback,
        event_key=ekey,
        env=env_name,
        app_version=version,
    )
