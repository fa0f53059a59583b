"""Run a function in a unit test, without a server: steps inline or mocked.

The same call shapes as the official SDK's ``inngest.experimental.mocked``, so
a test written for it ports by changing its import
(``from inngest.experimental import mocked`` becomes
``from connect.sdk import testing as mocked``)::

    client = mocked.Inngest(app_id="test", is_production=False)
    res = mocked.trigger(
        place_order,
        inngest.Event(name="shop/order.placed", data={"id": 7}),
        client,
        step_stubs={"fetch-rate": 1.25, "wait-for-payment": mocked.Timeout},
    )
    assert res.status is mocked.Status.COMPLETED
    assert res.output == {"total": 8.75}

``trigger`` drives the run request by request through the same engine a
worker uses (``connect.sdk.execution.execute``), playing the executor's part
in memory:

- ``step.run`` bodies run inline, and their results are memoized exactly as
  on the platform (typed outputs included); a failing step is retried (its
  ``retries``, 4 when unset, as the platform's default) and, once out of
  attempts, raises ``StepError`` into the handler.
- ``step.sleep`` / ``sleep_until`` return at once.
- ``step.send_event`` runs, through the mocked client's ``send``, which sends
  nothing and returns one id of zeros per event.
- ``step.wait_for_event`` and ``step.invoke`` must be stubbed (else
  ``UnstubbedStepError``); ``Timeout`` as a stub makes a wait time out (it
  returns ``None``).
- Any step can be stubbed by its id in ``step_stubs``: its body does not run
  and the stub is what it returns.
- A function that raises is retried up to its ``retries`` (4 when unset),
  then the result has ``Status.FAILED`` and the exception; a
  ``NonRetriableError`` fails it at once.

Unlike the platform, no time passes and nothing is stored; each ``trigger``
is one run with ``run_id`` ``"test"``. ``trigger`` is a plain function: it runs
the function on an event loop of its own (in a thread of its own when called
from a running loop, e.g. inside an async test).
"""

from __future__ import annotations

import asyncio
import enum
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from connect.sdk import errors
from connect.sdk.client import Client as _Client
from connect.sdk.events import Event, normalize
from connect.sdk.execution import Invocation, Outcome, execute
from connect.sdk.function import Function
from connect.sdk.serializer import json_default
from protocol.payloads import (
    OP_SLEEP,
    OP_STEP_ERROR,
    OP_STEP_FAILED,
    OP_STEP_PLANNED,
    OP_STEP_RUN,
    STATUS_DONE,
    STATUS_ERROR,
)

__all__ = ["Client", "Inngest", "Status", "Timeout", "UnstubbedStepError", "trigger"]

#: Retries when the function sets none (the platform's default).
DEFAULT_RETRIES: Final = 4
#: Requests one ``trigger`` may make before it gives up (a run that never ends).
MAX_REQUESTS: Final = 10_000
#: The id the mocked client gives every event it "sends".
MOCK_EVENT_ID: Final = "0" * 26
RUN_ID: Final = "test"


class Status(enum.Enum):
    """How a triggered run ended."""

    COMPLETED = "Completed"
    FAILED = "Failed"


class _Timeout:
    def __repr__(self) -> str:
        return "Timeout"


#: A ``step_stubs`` value that makes ``step.wait_for_event`` time out (return ``None``).
Timeout: Final[Any] = _Timeout()


class UnstubbedStepError(Exception):
    """A step that needs the platform (``wait_for_event``, ``invoke``) was reached without a stub."""

    def __init__(self, step_id: str) -> None:
        super().__init__(f"step {step_id} is not stubbed")
        self.step_id = step_id


class Client(_Client):
    """A client whose ``send`` / ``send_sync`` send nothing: one id of zeros per
    event. Nothing is sent, so no middleware runs for it either, as in the
    official mocked client; ``skip_middleware`` is there for the same signature."""

    async def send(self, events: Event | Sequence[Event], *, skip_middleware: bool = False) -> list[str]:
        return [MOCK_EVENT_ID for _ in normalize(events)]

    def send_sync(self, events: Event | Sequence[Event], *, skip_middleware: bool = False) -> list[str]:
        return [MOCK_EVENT_ID for _ in normalize(events)]


#: The official name of the mocked client (``mocked.Inngest(app_id=..., is_production=False)``).
Inngest = Client


@dataclass
class _Result:
    """What ``trigger`` returns: ``status``, and ``output`` (completed) or ``error`` (failed)."""

    error: Exception | None
    output: object
    status: Status


def trigger(
    fn: Function,
    event: Event | list[Event],
    client: Client,
    *,
    step_stubs: Mapping[str, object] | None = None,
) -> _Result:
    """Run ``fn`` for ``event`` (or a batch of events) to its end; see the module doc.

    ``step_stubs`` maps step ids to what those steps return.
    """
    events = event if isinstance(event, list) else [event]
    if not events:
        raise ValueError("trigger needs at least one event")
    run = _Run(fn, normalize(events), client, dict(step_stubs or {}))
    result: _Result = _on_own_loop(run.drive)
    return result


def _on_own_loop(main: Callable[[], Any]) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    # Called from a running loop (an async test): run on a loop in another thread.
    box: list[Any] = []

    def target() -> None:
        try:
            box.append((True, asyncio.run(main())))
        except BaseException as exc:  # handed to the caller below
            box.append((False, exc))

    thread = threading.Thread(target=target, name="connect-testing-trigger")
    thread.start()
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value


class _Run:
    """The executor's part, in memory: memoized steps, targets, attempts."""

    def __init__(self, fn: Function, events: list[Event], client: Client, stubs: dict[str, object]) -> None:
        self._fn = fn
        self._events = [msgspec.to_builtins(e, enc_hook=json_default) for e in events]
        self._client = client
        self._stubs = stubs
        self._steps: dict[str, Any] = {}
        self._max_attempts = (DEFAULT_RETRIES if fn.retries is None else fn.retries) + 1
        self._slug = fn.fully_qualified_id(client.app_id)

    async def drive(self) -> _Result:
        pending: list[str] = ["step"]  # targets still to request; "step" = discover the next one
        attempt = 0
        for _ in range(MAX_REQUESTS):
            target = pending[0]
            outcome = await self._request(target, attempt)
            if outcome.status == STATUS_DONE:
                return _Result(error=None, output=msgspec.json.decode(outcome.body), status=Status.COMPLETED)
            if outcome.status == STATUS_ERROR:
                if outcome.no_retry or attempt + 1 >= self._max_attempts:
                    return _Result(error=_exception(outcome), output=None, status=Status.FAILED)
                attempt += 1
                continue
            ops = msgspec.json.decode(outcome.body)
            retry = False
            for op in ops:
                retry = self._apply(op, pending) or retry
            if retry and not outcome.no_retry and attempt + 1 < self._max_attempts:
                attempt += 1
                continue
            if retry:  # out of attempts, or not to be retried: the step has failed for good
                for op in ops:
                    if op["op"] == OP_STEP_ERROR:
                        self._steps[op["id"]] = {"error": _memo_error(op["error"])}
            pending.pop(0)
            if not pending:
                pending.append("step")
            attempt = 0
        raise RuntimeError(f"{self._fn.id}: the run did not end within {MAX_REQUESTS} requests")

    def _apply(self, op: dict[str, Any], pending: list[str]) -> bool:
        """Record what one reported op asks for; True if the request must be retried."""
        kind, step_hash, name = op["op"], op["id"], op.get("displayName") or op.get("name", "")
        if name in self._stubs and kind != OP_STEP_ERROR:
            stub = self._stubs[name]
            self._steps[step_hash] = {
                "data": None if stub is Timeout else msgspec.to_builtins(stub, enc_hook=json_default)
            }
            return False
        if kind == OP_STEP_RUN:
            self._steps[step_hash] = {"data": op.get("data")}
        elif kind == OP_STEP_PLANNED:
            pending.append(step_hash)
        elif kind == OP_SLEEP:
            self._steps[step_hash] = None
        elif kind == OP_STEP_FAILED:
            self._steps[step_hash] = {"error": _memo_error(op["error"])}
        elif kind == OP_STEP_ERROR:
            return True
        else:  # OP_WAIT_FOR_EVENT, OP_INVOKE_FUNCTION: only the platform can answer them
            raise UnstubbedStepError(name)
        return False

    async def _request(self, target: str, attempt: int) -> Outcome:
        ctx = {
            "run_id": RUN_ID,
            "attempt": attempt,
            "max_attempts": self._max_attempts,
            # Every new step is planned first, then run by a request of its own,
            # so a stub replaces a step before its body could run.
            "disable_immediate_execution": True,
            "use_api": False,
            "stack": {"stack": list(self._steps), "current": len(self._steps)},
            "fn_id": self._slug,
            "step_id": target,
            "env": "",
        }
        payload = msgspec.json.encode(
            {
                "event": self._events[0],
                "events": self._events,
                "steps": self._steps,
                "ctx": ctx,
                "use_api": False,
                "version": 2,
            }
        )
        return await execute(self._client, {self._slug: self._fn}, Invocation(payload, self._slug, target))


def _memo_error(error: dict[str, Any]) -> dict[str, Any]:
    return {"name": error.get("name", "Error"), "message": error.get("message", ""), "stack": error.get("stack")}


def _exception(outcome: Outcome) -> Exception:
    """The function's own exception, or one rebuilt from the reply when the SDK refused the request."""
    if outcome.exception is not None:
        return outcome.exception
    body = msgspec.json.decode(outcome.body)
    return errors.StepError(body.get("message", ""), body.get("name", "Error"), body.get("stack"))
