"""How user-facing configuration is validated: pydantic field types, and its errors
turned into one ``FunctionConfigError`` that names each field that is wrong.

Used where the user configures something once (a function's options, a
client's settings), never on a per-step path.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationError

from connect.sdk.errors import FunctionConfigError


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string")
    return value


#: A string with something in it; a non-string is refused, not converted.
NonBlank = Annotated[str, Field(strict=True), AfterValidator(_not_blank)]


def instance_of(*kinds: type) -> AfterValidator:
    """A field that takes instances of `kinds` as they are (option objects that validate themselves)."""
    names = " or ".join(kind.__name__ for kind in kinds)

    def check(value: object) -> object:
        if not isinstance(value, kinds):
            raise ValueError(f"must be a {names}, got {type(value).__name__}")
        return value

    return AfterValidator(check)


def config_error(subject: str, exc: ValidationError) -> FunctionConfigError:
    """``<subject>: <field>: <what is wrong>, got <value>``, one part per error, joined with ``; ``."""
    parts = []
    for error in exc.errors(include_url=False):
        field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
        kind = error["type"]
        if kind == "missing":
            parts.append(f"{field}: is required")
        elif kind == "extra_forbidden":
            parts.append(f"{field}: is not an option")
        elif kind == "value_error":
            message = str(error["ctx"]["error"])
            parts.append(f"{field}: {message}" if " got " in message else f"{field}: {message}, got {error['input']!r}")
        else:
            message = error["msg"][:1].lower() + error["msg"][1:]
            parts.append(f"{field}: {message}, got {error['input']!r}")
    return FunctionConfigError(f"{subject}: {'; '.join(parts)}")


@lru_cache(maxsize=4096)
def cel_problem(text: str) -> str | None:
    """Why ``text`` is not a CEL expression, or None. Syntax only: what an
    expression reads (``event.data...``) is known when it runs.

    cel-python is imported on first use, so functions without expressions
    do not pay for loading its parser; answers are cached (a fleet registers
    the same expressions again and again).
    """
    from celpy.celparser import CELParseError

    try:
        _cel_environment().compile(text)
    except CELParseError as exc:
        caret = str(exc).split("\n")
        column = caret[1].find("^") if len(caret) > 1 else -1
        where = f" at character {column + 1}" if column >= 0 else ""
        return f"is not a valid CEL expression (syntax error{where})"
    return None


@lru_cache(maxsize=1)
def _cel_environment() -> Any:
    import celpy

    return celpy.Environment()
