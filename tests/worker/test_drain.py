"""The drain's deadline (`connect.worker.drain`) on an injected clock: no waiting."""

from __future__ import annotations

import asyncio
import json

import pytest

from connect.worker.clock import Clock
from connect.worker.drain import wait_idle
from protocol import connect_pb2 as pb
from protocol.ledger import WorkerLedger

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def ledger_with(*rids: str) -> WorkerLedger:
    ledger = WorkerLedger(max_buffer_bytes=1 << 20)
    for rid in rids:
        req = pb.GatewayExecutorRequestData(
            request_id=rid, run_id=f"run-{rid}", step_id="step", lease_id="l", request_payload=json.dumps({}).encode()
        )
        ledger.accept(req, 0.0, 10.0)
    return ledger


class Steps:
    """A monotonic clock that reads the next of `readings` each time."""

    def __init__(self, *readings: float) -> None:
        self.readings = list(readings)

    def __call__(self) -> float:
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


async def test_past_the_deadline_what_is_left_is_abandoned() -> None:
    ledger = ledger_with("r1", "r2")
    clock = Clock(monotonic=Steps(100.0, 100.0 + 601.0))  # the drain started, then 601 s passed
    abandoned = await asyncio.wait_for(wait_idle(ledger, 600.0, asyncio.Event(), clock), 10)
    assert abandoned == 2 and ledger.idle


async def test_a_drain_that_empties_in_time_abandons_nothing() -> None:
    ledger = ledger_with("r1")
    progress = asyncio.Event()
    drained = asyncio.ensure_future(wait_idle(ledger, 600.0, progress, Clock(monotonic=Steps(5.0))))
    await asyncio.sleep(0)
    assert not drained.done()
    ledger.drop("r1")
    progress.set()
    assert await asyncio.wait_for(drained, 10) == 0
