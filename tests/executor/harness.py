"""An executor over a real SQLite store, driving `ScriptedWorker` functions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec

from connect.executor import Executor
from connect.store import PostgresStore, SqliteStore, Store
from protocol.payloads import (
    BatchEventsConfig,
    CancelConfig,
    DebounceConfig,
    FunctionConfig,
    IncomingEvent,
    Retries,
    Runtime,
    StepConfig,
    TimeoutsConfig,
    Trigger,
)
from tests.executor.scripted_worker import Ctx, ScriptedWorker, Step

APP = "shop"


def config(
    fn_id: str,
    event: str | None = None,
    *,
    retries: int | None = None,
    expression: str | None = None,
    triggers: list[Trigger] | None = None,
    cancel: list[dict[str, Any]] | None = None,
    timeouts: dict[str, Any] | None = None,
    flow: dict[str, Any] | None = None,
    debounce: dict[str, Any] | None = None,
    batch_events: dict[str, Any] | None = None,
) -> FunctionConfig:
    """`flow`: flow-control options in their wire form (`{"throttle": {...}}`)."""
    step = StepConfig(
        id="step",
        name="step",
        runtime=Runtime(type="ws", url=f"wss://connect?fnId={APP}-{fn_id}&stepId=step"),
        retries=None if retries is None else Retries(attempts=retries),
    )
    fn = FunctionConfig(
        id=f"{APP}-{fn_id}",
        name=fn_id,
        triggers=triggers if triggers is not None else [Trigger(event=event, expression=expression)],
        steps={"step": step},
        cancel=None if cancel is None else msgspec.convert(cancel, list[CancelConfig]),
        timeouts=None if timeouts is None else msgspec.convert(timeouts, TimeoutsConfig),
        debounce=None if debounce is None else msgspec.convert(debounce, DebounceConfig),
        batchEvents=None if batch_events is None else msgspec.convert(batch_events, BatchEventsConfig),
    )
    if flow:
        fn = msgspec.convert({**msgspec.to_builtins(fn), **flow}, FunctionConfig)
    return fn


class Harness:
    def __init__(self, path: Path, dsn: str | None = None) -> None:
        self.path = path
        #: A PostgreSQL database to use instead of the SQLite file at `path`.
        self.dsn = dsn
        self.store: Store
        self.worker: ScriptedWorker
        self.executor: Executor
        self.configs: dict[str, FunctionConfig] = {}

    async def open(self, **executor_options: Any) -> None:
        self.store = await (SqliteStore.open(self.path) if self.dsn is None else PostgresStore.open(self.dsn))
        self.worker = ScriptedWorker(self.store)
        self.worker.worker_ready.set()
        options: dict[str, Any] = {"backoff_base": 0.001, "backoff_max": 0.01}
        options.update(executor_options)
        self.executor = Executor(self.store, self.worker, **options)
        await self.executor.start()

    async def close(self) -> None:
        await self.executor.stop()
        await self.store.close()

    async def deploy(self, fn_id: str, event: str | None, fn: Callable[[Step, Ctx], Any], **kw: Any) -> None:
        self.worker.functions[f"{APP}-{fn_id}"] = fn
        self.configs[fn_id] = config(fn_id, event, **kw)
        await self.executor.sync_app(APP, "v1", list(self.configs.values()))

    async def send(self, name: str, data: dict[str, Any] | None = None, **kw: Any) -> str:
        [event_id] = await self.executor.send_events([IncomingEvent(name=name, data=data, **kw)])
        return event_id

    async def only_run(self, event_id: str) -> dict[str, Any]:
        runs = await self.executor.runs_for_event(event_id)
        assert len(runs) == 1, runs
        return runs[0]

    async def finished(self, run_id: str, timeout: float = 10.0) -> dict[str, Any]:
        with anyio.fail_after(timeout):
            while True:
                run = await self.executor.get_run(run_id)
                assert run is not None
                if run["status"] != "Running":
                    return run
                await anyio.sleep(0.005)
