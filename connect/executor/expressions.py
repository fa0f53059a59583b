"""CEL `expression`s on triggers, compiled once per sync and evaluated per event.

An expression sees the candidate event as `event` (`name`, `data`, `id`,
`ts`, `user`). Anything other than a CEL `true` is no match: a missing field,
a type error or a non-boolean result never starts a run.
"""

from __future__ import annotations

import logging
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

log = logging.getLogger(__name__)

_ENV = celpy.Environment()


class Expression:
    """A compiled CEL expression over `event`."""

    def __init__(self, text: str) -> None:
        """Raises ValueError if `text` is not valid CEL."""
        try:
            self._program = _ENV.program(_ENV.compile(text))
        except CELParseError as exc:
            raise ValueError(f"invalid CEL expression {text!r}: {exc}") from exc
        self.text = text

    def matches(self, event: dict[str, Any]) -> bool:
        try:
            result = self._program.evaluate({"event": json_to_cel(event)})
        except CELEvalError:
            return False
        except Exception:  # a bug in an expression must not break event intake
            log.debug("expression %r failed on event %s", self.text, event.get("id"), exc_info=True)
            return False
        return isinstance(result, celtypes.BoolType) and bool(result)
