"""The one shape of every error the HTTP API answers."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    """`{"status": status, "error": message, ...extra}` with that HTTP status."""
    return JSONResponse({"status": status, "error": message, **extra}, status_code=status)
