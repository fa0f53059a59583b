"""Log set-up of every `connect` command: text lines (the default) or JSON lines.

`--log-format json` (or `CONNECT_LOG_FORMAT=json`) writes one JSON object per
line to stderr with `time` (ISO-8601 UTC), `level`, `logger` and `message`,
plus the fields a log call passes in `extra=` when they are among `FIELDS`
(`run_id`, `function`, `step`, `connection_id`, `instance_id`, ...). An
exception's traceback, when logged, is in `exc_info`. Text lines are
`TIME LEVEL LOGGER: MESSAGE`; the message already names the same things.
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import Any, Final

import msgspec

#: The log formats `--log-format` accepts.
FORMATS: Final = ("text", "json")

#: Structured fields a log call may pass in `extra=`; JSON lines carry them.
FIELDS: Final = (
    "run_id",
    "function",
    "status",
    "step",
    # Set on a handler's `ctx.logger` records by `connect.sdk.log_middleware.LoggerMiddleware`.
    "function_id",
    "step_id",
    "request_id",
    "connection_id",
    "instance_id",
    "app",
    "apps",
    "functions",
    "url",
    "api_url",
    "gateway_url",
    "store",
)

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Libraries whose per-request lines stay out of the log below warnings.
NOISY: Final = ("httpx", "httpcore", "websockets", "uvicorn.error")


#: A value JSON has no form for (an id object, a path) is written as its `str()`.
_ENCODER: Final = msgspec.json.Encoder(enc_hook=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for name in FIELDS:
            value = fields.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return _ENCODER.encode(line).decode()


def setup(level: str, fmt: str = "text") -> None:
    """Send every log line to stderr at `level` and above, as `fmt` says."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # One line per lifecycle event comes from our own loggers; keep the
    # per-request chatter of the HTTP and WebSocket libraries out of it.
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from connect.binding import QuietBindErrors

    logging.getLogger("uvicorn.error").addFilter(QuietBindErrors())
