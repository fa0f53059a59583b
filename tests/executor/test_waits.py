from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from connect.executor.cron import CronSchedule
from connect.executor.expressions import Equality, equality_of, index_key
from connect.executor.timers import Timers
from connect.executor.waits import CANCEL, RESUME, WaitIndex, Watch


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("async.data.id == event.data.id", Equality(("data", "id"), ("data", "id"), None, True)),
        ("event.data.user.id==async.data.uid", Equality(("data", "uid"), ("data", "user", "id"), None, True)),
        ("async.data.kind == 'paid'", Equality(("data", "kind"), None, "paid", True)),
        ('async.data.kind == "a \\"q\\""', Equality(("data", "kind"), None, 'a "q"', True)),
        ("async.data.n == 5", Equality(("data", "n"), None, 5, True)),
        ("async.data.n == 5.5 && async.data.ok", Equality(("data", "n"), None, 5.5, False)),
        ("async.data.ok && async.data.id == event.data.id", Equality(("data", "id"), ("data", "id"), None, False)),
        ("async.data.x == null", Equality(("data", "x"), None, None, True)),
    ],
)
def test_indexable_equalities_are_found(text: str, expected: Equality) -> None:
    assert equality_of(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "async.data.id == event.data.id || true",
        "async.data.a > event.data.b",
        "event.data.a == event.data.b",
        "async.data.a != 1",
        "size(async.data.items) == 1",
        "async.data['id'] == event.data.id",
        "(async.data.id == event.data.id)",
    ],
)
def test_other_shapes_are_left_to_cel(text: str) -> None:
    assert equality_of(text) is None


def test_index_keys_keep_cel_distinctions() -> None:
    keys = {index_key(v) for v in (1, 1.0, True, "1", None)}
    assert len(keys) == 5
    assert index_key({"a": 1}) is None and index_key([1]) is None


def watch(run: str, expression: str | None, trigger: dict[str, Any], *, action: str = RESUME) -> Watch:
    return Watch(run, "step", action, "billing/paid", trigger, expression)


def paid(**data: Any) -> dict[str, Any]:
    return {"name": "billing/paid", "data": data, "id": "e", "ts": 1, "user": {}}


def test_index_matches_by_value_and_by_full_condition() -> None:
    index = WaitIndex()
    assert index.add(watch("r1", "async.data.id == event.data.id", {"data": {"id": 1}}))
    assert index.add(watch("r2", "async.data.id == event.data.id", {"data": {"id": 2}}))
    assert index.add(watch("r3", "async.data.id == event.data.id && async.data.ok", {"data": {"id": 3}}))
    assert index.add(watch("r4", "async.data.total > event.data.limit", {"data": {"limit": 10}}))
    assert index.add(watch("r5", None, {}))
    # `event.data.id` is missing: the condition can never hold, so it is not filed.
    assert not index.add(watch("r6", "async.data.id == event.data.id", {"data": {}}))
    assert not index.add(watch("r7", "this is not CEL ((", {}))
    assert len(index) == 5

    def runs(candidate: dict[str, Any]) -> set[str]:
        return {w.run_id for w in index.match(candidate, 0)}

    assert runs(paid(id=1)) == {"r1", "r5"}
    assert runs(paid(id=1.0)) == {"r5"}  # 1.0 is not 1 in CEL
    assert runs(paid(id=3)) == {"r5"}
    assert runs(paid(id=3, ok=True)) == {"r3", "r5"}
    assert runs(paid(total=11)) == {"r4", "r5"}
    assert runs({**paid(id=1), "name": "billing/other"}) == set()
    assert index.remove("r1", "step") is not None
    assert index.remove("r1", "step") is None
    assert runs(paid(id=1)) == {"r5"}
    assert [w.run_id for w in index.remove_run("r2")] == ["r2"]
    assert len(index) == 3


def test_expired_cancel_conditions_do_not_match() -> None:
    index = WaitIndex()
    index.add(Watch("r1", "cancel:0", CANCEL, "billing/paid", {}, None, expires_ms=100))
    assert [w.run_id for w in index.match(paid(), 50)] == ["r1"]
    assert index.match(paid(), 150) == []


def test_matching_ten_thousand_watches_is_a_lookup() -> None:
    index = WaitIndex()
    for i in range(10_000):
        index.add(Watch(f"r{i}", "s", RESUME, "billing/paid", {"data": {"id": i}}, "async.data.id == event.data.id"))
    started = time.perf_counter()
    for i in range(1000):
        [found] = index.match(paid(id=i * 7), 0)
        assert found.run_id == f"r{i * 7}"
    assert time.perf_counter() - started < 0.5


@pytest.mark.anyio
async def test_timers_fire_in_order_on_one_handle() -> None:
    fired: list[tuple[str, float]] = []
    started = time.time()
    timers: Timers[str] = Timers(lambda key: fired.append((key, time.time() - started)), time.time)
    timers.start()
    now_ms = int(started * 1000)
    timers.set("c", now_ms + 150)
    timers.set("a", now_ms + 50)
    timers.set("b", now_ms + 100)
    timers.set("gone", now_ms + 60)
    assert timers.cancel("gone")
    timers.set("b", now_ms + 120)  # moved
    timers.set("past", now_ms - 1000)
    await asyncio.sleep(0.25)
    assert [k for k, _ in fired] == ["past", "a", "b", "c"]
    for key, at in fired[1:]:
        expected = {"a": 0.05, "b": 0.12, "c": 0.15}[key]
        assert expected - 0.002 <= at < expected + 0.05
    assert len(timers) == 0
    timers.stop()


def test_cron_schedules_with_time_zones() -> None:
    utc_midnight = 1767225600000  # 2026-01-01T00:00:00Z
    every_minute = CronSchedule("* * * * *")
    assert every_minute.next_after(utc_midnight) == utc_midnight + 60_000
    assert every_minute.next_after(utc_midnight - 1) == utc_midnight
    assert every_minute.latest_at_or_before(utc_midnight) == utc_midnight
    assert every_minute.latest_at_or_before(utc_midnight + 59_999) == utc_midnight
    new_york = CronSchedule("TZ=America/New_York 0 9 * * *")
    assert new_york.next_after(utc_midnight) == utc_midnight + 14 * 3600_000  # 9:00 EST = 14:00 UTC
    summer = 1782864000000  # 2026-07-01T00:00:00Z
    assert new_york.next_after(summer) == summer + 13 * 3600_000  # 9:00 EDT = 13:00 UTC
    assert CronSchedule("CRON_TZ=Asia/Tokyo @daily").next_after(utc_midnight) == utc_midnight + 15 * 3600_000
    for bad in ("TZ=Mars/Base * * * * *", "61 * * * *", "", "TZ=UTC"):
        with pytest.raises(ValueError):
            CronSchedule(bad)
