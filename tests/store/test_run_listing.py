"""Run listings (`Store.list_runs`, `Store.list_skipped`): every test runs on
SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from connect.executor.views import list_runs
from connect.store import (
    COMPLETED,
    FAILED,
    EventRecord,
    NewEvent,
    PendingRequest,
    RunFilter,
    RunMemo,
    RunRecord,
    StepInfo,
    StepMemo,
    Store,
)
from connect.store.start_gates import RateLimit, StartGate

pytestmark = pytest.mark.anyio


def new_run(run_id: str, function_id: str, started_at_ms: int) -> NewEvent:
    run = RunRecord(
        run_id=run_id,
        function_id=function_id,
        app_name="app",
        event_id=f"e-{run_id}",
        started_at_ms=started_at_ms,
        requests=[PendingRequest(f"req-{run_id}")],
    )
    event = EventRecord(f"e-{run_id}", "app/x", started_at_ms, started_at_ms, b'{"name":"app/x"}')
    return NewEvent(event, [run])


async def end(store: Store, run_id: str, status: str, at_ms: int) -> None:
    run = await store.get_run(run_id)
    assert run is not None
    run.status, run.ended_at_ms, run.requests = status, at_ms, []
    await store.save_run(run, fence=0)


async def ids(store: Store, **query: object) -> list[str]:
    return [r.run_id for r in await store.list_runs(RunFilter(**query))]  # type: ignore[arg-type]


async def test_runs_come_newest_first_filtered_by_status_function_and_start(store: Store) -> None:
    # r0..r9 start 1 s apart, alternating between two functions; r2 and r3 share a start.
    starts = [1000, 2000, 3000, 3000, 5000, 6000, 7000, 8000, 9000, 10_000]
    await store.record_events(
        [new_run(f"r{i}", "app-even" if i % 2 == 0 else "app-odd", at) for i, at in enumerate(starts)]
    )
    await end(store, "r1", COMPLETED, 2500)
    await end(store, "r4", FAILED, 5500)
    await end(store, "r8", COMPLETED, 9500)

    assert await ids(store) == ["r9", "r8", "r7", "r6", "r5", "r4", "r3", "r2", "r1", "r0"]
    assert await ids(store, status=COMPLETED) == ["r8", "r1"]
    assert await ids(store, status="Running") == ["r9", "r7", "r6", "r5", "r3", "r2", "r0"]
    assert await ids(store, function_id="app-odd") == ["r9", "r7", "r5", "r3", "r1"]
    assert await ids(store, function_id="app-even", status=COMPLETED) == ["r8"]
    assert await ids(store, function_id="nope") == []
    # From inclusive, to exclusive.
    assert await ids(store, started_from_ms=3000, started_before_ms=6000) == ["r4", "r3", "r2"]
    assert await ids(store, limit=3) == ["r9", "r8", "r7"]


async def test_pages_continue_after_the_last_run_and_never_repeat_one(store: Store) -> None:
    # 25 runs, many sharing a start: pages of 7 split ties, and still list each once.
    await store.record_events([new_run(f"r{i:02d}", "app-fn", 1000 * (i // 4)) for i in range(25)])
    seen: list[str] = []
    older_than: tuple[int, str] | None = None
    while True:
        page = await store.list_runs(RunFilter(limit=7, older_than=older_than))
        seen += [r.run_id for r in page]
        if len(page) < 7:
            break
        older_than = (page[-1].started_at_ms, page[-1].run_id)
    assert seen == [f"r{i:02d}" for i in reversed(range(25))]
    # A run started since the first page does not shift the next ones.
    await store.record_events([new_run("r99", "app-fn", 50_000)])
    page = await store.list_runs(RunFilter(limit=3, older_than=(5000, "r20")))
    assert [r.run_id for r in page] == ["r19", "r18", "r17"]


async def test_starts_flow_control_refused_are_listed_apart(store: Store) -> None:
    limit = RateLimit("k", limit=1, period_ms=60_000)
    for i, at in enumerate([1000, 2000, 3000]):
        new = new_run(f"r{i}", "app-fn", at)
        gated = NewEvent(new.event, new.runs, gates=[StartGate(f"r{i}", "app-fn", rate_limit=limit)])
        await store.record_events([gated])
    await store.record_events([new_run("other", "app-other", 4000)])
    assert await ids(store) == ["other", "r0"]
    skipped = await store.list_skipped(RunFilter())
    assert [(s.run_id, s.at_ms, s.event_id) for s in skipped] == [("r2", 3000, "e-r2"), ("r1", 2000, "e-r1")]
    assert "rate limit" in skipped[0].reason
    assert [s.run_id for s in await store.list_skipped(RunFilter(older_than=(3000, "r2")))] == ["r1"]
    assert await store.list_skipped(RunFilter(function_id="app-other")) == []
    assert [s.run_id for s in await store.list_skipped(RunFilter(started_before_ms=3000))] == ["r1"]


async def test_the_api_lists_skipped_starts_among_the_runs_newest_first(store: Store) -> None:
    limit = RateLimit("k", limit=1, period_ms=60_000)
    for i, at in enumerate([1000, 2000, 3000, 4000]):
        new = new_run(f"r{i}", "app-fn", at)
        await store.record_events(
            [NewEvent(new.event, new.runs, gates=[StartGate(f"r{i}", "app-fn", rate_limit=limit)])]
        )
    await store.record_events([new_run("late", "app-fn", 2500)])
    seen: list[tuple[str, str]] = []
    page = await list_runs(store, RunFilter(limit=2))
    while True:
        seen += [(run["run_id"], run["status"]) for run in page.runs]
        if page.next is None:
            break
        page = await list_runs(store, RunFilter(limit=2, older_than=page.next))
    assert seen == [("r3", "Skipped"), ("r2", "Skipped"), ("late", "Running"), ("r1", "Skipped"), ("r0", "Running")]
    only = await list_runs(store, RunFilter(status="Skipped", limit=10))
    assert [run["run_id"] for run in only.runs] == ["r3", "r2", "r1"] and only.next is None
    assert all("rate limit" in run["skip_reason"] for run in only.runs)
    running = await list_runs(store, RunFilter(status="Running", limit=2))
    assert [run["run_id"] for run in running.runs] == ["late", "r0"] and running.next is None


async def test_a_page_of_10000_runs_is_read_from_an_index(store: Store) -> None:
    await store.record_events([new_run(f"r{i:05d}", f"app-fn{i % 10}", 1_000_000 + i) for i in range(10_000)])
    for i in range(0, 10_000, 7):
        await end(store, f"r{i:05d}", FAILED if i % 2 else COMPLETED, 2_000_000)
    queries = [
        RunFilter(),
        RunFilter(status=FAILED),
        RunFilter(function_id="app-fn3", status="Running"),
        RunFilter(started_from_ms=1_004_000, started_before_ms=1_005_000),
        RunFilter(function_id="app-fn7", older_than=(1_000_500, "r00500")),
    ]
    loop = asyncio.get_running_loop()
    for query in queries:
        started = loop.time()
        page = await store.list_runs(msgspec.structs.replace(query, limit=50))
        took = loop.time() - started
        assert len(page) == 50
        starts = [run.started_at_ms for run in page]
        assert starts == sorted(starts, reverse=True)
        # A walk down an index takes about a millisecond; the margin is for a loaded machine.
        assert took < 0.5, (query, took)
    assert [r.run_id for r in page][:2] == ["r00497", "r00487"]


async def test_each_step_keeps_its_name_kind_and_times_with_its_result(store: Store) -> None:
    await store.record_events([new_run("r", "app-fn", 1000)])
    run = await store.get_run("r")
    assert run is not None
    charged = StepInfo(name="charge card", attempts=3, started_ms=1100, ended_ms=1200)
    napped = StepInfo(name="nap", kind="sleep", started_ms=1200, ended_ms=5200, due_ms=5200)
    await store.save_run(run, fence=0, memos=[StepMemo("h1", b'{"data":1}', charged), StepMemo("h0", b'{"data":0}')])
    assert await store.put_memo("r", StepMemo("h2", b"null", napped))
    waited = StepInfo(name="approval", kind="wait", started_ms=5300, ended_ms=6000, due_ms=9000)
    event = EventRecord("approve", "app/approved", 6000, 6000, b'{"name":"app/approved"}')
    await store.record_events(
        [NewEvent(event, [], memos=[RunMemo("r", StepMemo("h3", b'{"name":"app/approved"}', waited))])]
    )
    assert await store.run_steps("r") == [
        StepMemo("h1", b'{"data":1}', charged),
        StepMemo("h0", b'{"data":0}'),
        StepMemo("h2", b"null", napped),
        StepMemo("h3", b'{"name":"app/approved"}', waited),
    ]
    # Resuming the run reads the results alone.
    assert [m.info for m in await store.get_memos("r")] == [None] * 4
    assert await store.run_steps("nope") == []


async def test_events_come_newest_first_by_name_a_page_after_another(store: Store) -> None:
    names = ["app/a", "app/b", "app/a", "app/c", "app/a"]
    events = [
        EventRecord(f"e{i}", name, i, 1000 + i // 2, b'{"name":"%s"}' % name.encode()) for i, name in enumerate(names)
    ]
    await store.record_events([NewEvent(event, []) for event in events])
    listed = await store.list_events(None, None, 10)
    assert [e.id for e in listed] == ["e4", "e3", "e2", "e1", "e0"]
    assert listed[0] == events[4]
    assert [e.id for e in await store.list_events("app/a", None, 10)] == ["e4", "e2", "e0"]
    assert [e.id for e in await store.list_events("app/a", (1001, "e2"), 10)] == ["e0"]
    assert [e.id for e in await store.list_events(None, (1001, "e3"), 2)] == ["e2", "e1"]
    assert await store.list_events("nope", None, 10) == []
