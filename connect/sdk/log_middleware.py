"""``ctx.logger`` that names the run, the function and the step on every record, and stays quiet while replaying.

``LoggerMiddleware`` replaces ``ctx.logger`` with a ``RunLogger`` for each
request. Each record it emits carries, as attributes (``extra``):

* ``run_id``: the run;
* ``function_id``: the function's fully-qualified id (``<app id>-<function id>``,
  as the platform and the dashboard name it);
* ``step_id``: the user's id of the step whose ``step.run`` body is running
  (``None`` in code outside a step body).

``connect``'s JSON log format (``--log-format json`` / ``CONNECT_LOG_FORMAT=json``)
writes them as fields; a user's own formatter can name them
(``%(run_id)s``). Fields the call passes in ``extra=`` are kept beside them.

As the official SDK's logger middleware does, calls made while the request
replays code that an earlier request already ran (before the last stored
step result is handed back) are dropped, so each line is logged once per run
rather than once per request.

The official SDK installs its logger middleware on every client; here it is
opt-in: ``Client(middleware=[LoggerMiddleware])``.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from connect.sdk.middleware import MiddlewareSync, StepMemos
from connect.sdk.replay import current_step

if TYPE_CHECKING:
    from connect.sdk.client import Client
    from connect.sdk.context import Context, ContextSync
    from connect.sdk.function import Function

__all__ = ["LoggerMiddleware", "RunLogger"]


class RunLogger(logging.LoggerAdapter[Any]):
    """A logger for one request: adds ``run_id``, ``function_id`` and ``step_id``,
    and logs nothing until the request runs new code."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter[Any], run_id: str, function_id: str) -> None:
        super().__init__(logger, {"run_id": run_id, "function_id": function_id})
        self.live = False

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging's name
        return self.live and self.logger.isEnabledFor(level)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        fields = {**self.extra, "step_id": current_step()} if self.extra else {"step_id": current_step()}
        given = kwargs.get("extra")
        kwargs["extra"] = {**fields, **given} if given else fields
        return msg, kwargs


class LoggerMiddleware(MiddlewareSync):
    """Gives each request's ``ctx.logger`` the run, function and step fields (see the module doc)."""

    def __init__(self, client: Client, raw_request: object) -> None:
        super().__init__(client, raw_request)
        self._logger: RunLogger | None = None
        self._live = False

    def transform_input(self, ctx: Context | ContextSync, function: Function, steps: StepMemos) -> None:
        base = ctx.logger.logger if isinstance(ctx.logger, RunLogger) else ctx.logger
        self._logger = RunLogger(base, ctx.run_id, function.fully_qualified_id(self.client.app_id))
        self._logger.live = self._live
        ctx.logger = self._logger

    def before_execution(self) -> None:
        self._live = True
        if self._logger is not None:
            self._logger.live = True
