"""Query parameters shared by the REST listings: page size, cursor, times.

Every listing answers `{"data": [...], "cursor": ...}`, newest first.
`cursor` is opaque to clients: sent back as `?cursor=`, it continues the
listing right after the last item of the page it came with, so a page never
repeats or skips an item whatever is added meanwhile; it is null on the last
page. Anything malformed raises `BadQuery`, answered 400 with its message.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Final

import msgspec

#: Items per page when `limit` is not given, and the most one page holds.
DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500


class BadQuery(ValueError):
    """A query parameter that cannot be used; the message says which and why."""


def page_limit(raw: str | None) -> int:
    """`?limit=`: an integer from 1 to `MAX_LIMIT`, `DEFAULT_LIMIT` when absent."""
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise BadQuery(f"limit must be an integer from 1 to {MAX_LIMIT}, not {raw!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadQuery(f"limit must be from 1 to {MAX_LIMIT}, not {limit}")
    return limit


def encode_cursor(position: tuple[int, str]) -> str:
    """The cursor of a page ending at `position` (time in Unix ms, id)."""
    return base64.urlsafe_b64encode(msgspec.json.encode(position)).decode().rstrip("=")


def decode_cursor(raw: str | None) -> tuple[int, str] | None:
    """`?cursor=`: the position a previous page ended at (None: the first page)."""
    if raw is None or raw == "":
        return None
    try:
        decoded = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        at_ms, item_id = msgspec.json.decode(decoded, type=tuple[int, str])
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise BadQuery("cursor is not one this API answered: send back the cursor of the previous page") from None
    return at_ms, item_id


def time_ms(name: str, raw: str | None) -> int | None:
    """`?from=` / `?to=`: an ISO-8601 time (`2026-12-07T22:00:00Z`; a time
    without an offset is taken as UTC), as Unix ms; None when absent."""
    if raw is None or raw == "":
        return None
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        raise BadQuery(f"{name} must be an ISO-8601 time such as 2026-12-07T22:00:00Z, not {raw!r}") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return int(at.timestamp() * 1000)
