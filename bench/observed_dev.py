"""`connect dev`, with the platform's metrics counted or not, for `bench.observability`.

`python -m bench.observed_dev [--no-metrics] DEV_ARGS...` runs `connect dev
DEV_ARGS...`. The product has no switch for its metrics (they are always
counted), so `--no-metrics` makes this process's counting do nothing: the
executor's run and step metrics (`RunMetrics`: one histogram observation
per step, counters per run) and the API's count of HTTP answers (one
counter per request) are replaced by methods that return at once. Metrics
read at scrape time (the gateway's) cost nothing until scraped, and none is
scraped here. The run-end log line is set with `connect dev`'s own
`--log-level` and `--log-format`.
"""

from __future__ import annotations

import sys
from typing import Any


def _nothing(*_args: Any, **_kwargs: Any) -> None:
    return None


def switch_metrics_off() -> None:
    from starlette.types import Receive, Scope, Send

    from connect.metrics.http_answers import HttpAnswers
    from connect.metrics.platform import RunMetrics

    for name in ("recorded", "run_started", "run_finished", "run_skipped", "waiting", "step_done"):
        setattr(RunMetrics, name, _nothing)

    async def passthrough(self: HttpAnswers, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    HttpAnswers.__call__ = passthrough  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--no-metrics":
        switch_metrics_off()
        argv = argv[1:]
    from connect.cli import main as cli

    return cli(["dev", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
