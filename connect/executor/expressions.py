"""CEL expressions: trigger filters, wait conditions and cancel conditions.

A trigger `expression` sees the candidate event as `event`. A wait's or a
cancellation's `if` sees two: `event`, the run's triggering event, and
`async`, the incoming candidate. Anything other than a CEL `true` is no
match: a missing field, a type error or a non-boolean result never starts,
resumes or cancels anything.

Evaluating CEL costs about a tenth of a millisecond, far too much to try
every paused run against every event. So `equality_of` looks for the shape
nearly every wait has, `async.<path> == event.<path>` (or a literal on one
side), possibly among other `&&` conjuncts. The event side is fixed when the
wait starts, so the wait can be filed under the value it needs and found by
one dictionary lookup on the candidate's `<path>` (see `connect.executor.waits`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import celpy
import msgspec
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

log = logging.getLogger(__name__)

_ENV = celpy.Environment()


class Expression:
    """A compiled CEL expression."""

    def __init__(self, text: str) -> None:
        """Raises ValueError if `text` is not valid CEL."""
        try:
            self._program = _ENV.program(_ENV.compile(text))
        except CELParseError as exc:
            raise ValueError(f"invalid CEL expression {text!r}: {exc}") from exc
        self.text = text

    def matches(self, event: dict[str, Any]) -> bool:
        """A trigger filter: `event` is the candidate."""
        return self.evaluate({"event": json_to_cel(event)})

    def evaluate(self, activation: Mapping[str, Any]) -> bool:
        """True only for a CEL `true`; `activation` holds CEL values (see `to_cel`)."""
        try:
            result = self._program.evaluate(dict(activation))
        except CELEvalError:
            return False
        except Exception:  # a bug in an expression must not break event intake
            log.debug("expression %r failed", self.text, exc_info=True)
            return False
        return isinstance(result, celtypes.BoolType) and bool(result)

    def value(self, activation: Mapping[str, Any]) -> Any:
        """The result as a CEL value (a flow-control key), or None when it
        cannot be evaluated (a missing field, a type error)."""
        try:
            result = self._program.evaluate(dict(activation))
        except CELEvalError:
            return None
        except Exception:  # a bug in an expression must not break event intake
            log.debug("expression %r failed", self.text, exc_info=True)
            return None
        if isinstance(result, CELEvalError):  # some errors come back as the value
            return None
        return result

    def result(self, event: dict[str, Any]) -> Any:
        """The value of an expression over `event` (a concurrency key, a
        priority), as a CEL value; raises ValueError when it cannot be evaluated."""
        try:
            return self._program.evaluate({"event": json_to_cel(event)})
        except CELEvalError as exc:
            raise ValueError(f"{self.text!r}: {exc}") from exc
        except Exception as exc:  # a bug in an expression must not break a run
            raise ValueError(f"{self.text!r} failed: {exc}") from exc


@lru_cache(maxsize=4096)
def compiled(text: str) -> Expression:
    """`Expression(text)`, shared: a thousand runs waiting with one `if` compile it once."""
    return Expression(text)


def to_cel(value: dict[str, Any]) -> Any:
    return json_to_cel(value)


# --- the indexable shape -------------------------------------------------------------

Path = tuple[str, ...]

_MISSING: Final = object()
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_OPERAND = re.compile(
    rf"""\s*(?:
        (?P<root>event|async)(?P<path>(?:\.{_IDENT})+)
      | (?P<dq>"(?:[^"\\]|\\.)*")
      | (?P<sq>'[^'\\]*')
      | (?P<num>-?\d+(?:\.\d+)?)
      | (?P<kw>true|false|null)
    )\s*$""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Equality:
    """`async.<path> == <other>`, where other is `event.<event_path>` or `literal`.

    `whole` is true when this equality is the entire expression, so a match
    of the values is a match of the expression and CEL need not run.
    """

    path: Path
    event_path: Path | None
    literal: Any
    whole: bool

    def wanted(self, trigger: dict[str, Any]) -> Any:
        """The value the candidate must have at `path`; `MISSING` if it can never match."""
        if self.event_path is None:
            return self.literal
        return lookup(trigger, self.event_path)


MISSING: Final = _MISSING


def lookup(value: Any, path: Path) -> Any:
    """`value.a.b` for path `("a", "b")`, or `MISSING`."""
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def index_key(value: Any) -> bytes | None:
    """The exact-equality key of a JSON value, or None if CEL must decide.

    JSON text keeps the distinctions CEL makes: `1`, `1.0`, `true` and `"1"`
    are four different keys, as they are four unequal CEL values.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return msgspec.json.encode(value)
    return None


@lru_cache(maxsize=4096)
def equality_of(text: str) -> Equality | None:
    """The first indexable `==` conjunct of `text`, if it has one."""
    conjuncts = _split_and(text)
    if conjuncts is None:
        return None
    for conjunct in conjuncts:
        sides = _split_eq(conjunct)
        if sides is None:
            continue
        left, right = (_operand(side) for side in sides)
        if left is None or right is None:
            continue
        if left[0] != "async":
            left, right = right, left
        if left[0] != "async" or right[0] == "async":
            continue
        _, path, _ = left
        kind, other_path, literal = right
        whole = len(conjuncts) == 1
        if kind == "event":
            return Equality(path, other_path, None, whole)
        return Equality(path, None, literal, whole and index_key(literal) is not None)
    return None


def _operand(text: str) -> tuple[str, Path, Any] | None:
    match = _OPERAND.match(text)
    if match is None:
        return None
    if match["root"]:
        return match["root"], tuple(match["path"][1:].split(".")), None
    if match["dq"]:
        try:
            return "literal", (), json.loads(match["dq"])
        except ValueError:
            return None
    if match["sq"]:
        return "literal", (), match["sq"][1:-1]
    if match["num"]:
        number = match["num"]
        return "literal", (), float(number) if "." in number else int(number)
    return "literal", (), {"true": True, "false": False, "null": None}[match["kw"]]


def _unquoted(text: str) -> Iterator[int]:
    """Indices of the characters of `text` outside string literals (escapes honoured)."""
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        else:
            yield i
        i += 1


def _split_and(text: str) -> list[str] | None:
    """Top-level `&&` conjuncts; None if the text has `||`, `!` or brackets at top level."""
    parts: list[str] = []
    depth = 0
    start = 0
    skip = -1  # the second character of an operator already taken
    for i in _unquoted(text):
        if i <= skip:
            continue
        ch = text[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and text.startswith("&&", i):
            parts.append(text[start:i])
            start = i + 2
            skip = i + 1
        elif depth == 0 and (text.startswith("||", i) or ch == "?"):
            return None
    parts.append(text[start:])
    return parts


def _split_eq(text: str) -> tuple[str, str] | None:
    found: int | None = None
    skip = -1
    for i in _unquoted(text):
        if i <= skip:
            continue
        if text.startswith("==", i):
            if found is not None:
                return None
            found = i
            skip = i + 1
        elif text[i] in "<>!=()":
            return None
    if found is None:
        return None
    return text[:found], text[found + 2 :]
