"""`PollWindow`: a window learned from the gaps between messages, a loop kept
polling for it after traffic and then asleep again; and its settings."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop

from connect import polling
from connect.polling import PollWindow

MOST = 0.016  # least = MOST / GROW_STEPS = 1 ms


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> _Clock:
    return _Clock()


@pytest.fixture
def window(clock: _Clock) -> Iterator[PollWindow]:
    """A window of MOST on `clock`, on a loop that never runs (learning needs no turns)."""
    loop = asyncio.new_event_loop()
    try:
        yield PollWindow(loop, MOST, clock, cpu_clock=clock)
    finally:
        loop.close()


def _wait(window: PollWindow, clock: _Clock, seconds: float) -> None:
    """Traffic, then its answer `seconds` later."""
    window.touch()
    clock.now += seconds
    window.arrived()


# --- learning ----------------------------------------------------------------------------------


def test_a_new_window_is_zero_and_a_touch_does_not_poll(window: PollWindow, clock: _Clock) -> None:
    window.touch()
    assert window.window == 0.0 and not window.polling and window.opened == 0


def test_answers_missed_by_less_than_most_grow_the_window_to_most(window: PollWindow, clock: _Clock) -> None:
    sizes = []
    for _ in range(7):
        _wait(window, clock, 0.010)  # after the window each time, within MOST
        sizes.append(window.window)
    assert sizes == pytest.approx([0.001, 0.002, 0.004, 0.008, 0.016, 0.016, 0.016])
    assert window.grown == 5 and window.caught == 2  # 10 ms is inside a 16 ms window


def test_an_answer_inside_the_window_changes_nothing(window: PollWindow, clock: _Clock) -> None:
    for _ in range(3):
        _wait(window, clock, 0.003)
    assert window.window == pytest.approx(0.004)
    for _ in range(10):
        _wait(window, clock, 0.003)
    assert window.window == pytest.approx(0.004) and window.caught == 10


def test_answers_later_than_most_halve_the_window_down_to_zero(window: PollWindow, clock: _Clock) -> None:
    for _ in range(5):
        _wait(window, clock, 0.012)
    assert window.window == pytest.approx(MOST)
    sizes = []
    for _ in range(6):
        _wait(window, clock, 0.5)  # polling for these was spent for nothing
        sizes.append(window.window)
    assert sizes == pytest.approx([0.008, 0.004, 0.002, 0.001, 0.0, 0.0])
    assert window.shrunk == 6
    window.close()
    window.touch()
    assert window.closes_at == 0.0  # back to sleeping right after traffic


def test_traffic_further_apart_than_most_never_opens_a_window(window: PollWindow, clock: _Clock) -> None:
    """What an idle or quiet process pays: nothing."""
    rng = random.Random(5)
    for _ in range(1000):
        window.touch()
        clock.now += MOST * rng.uniform(1.01, 100)
        if rng.random() < 0.5:
            window.arrived()
    assert window.window == 0.0 and window.opened == 0 and window.grown == 0


def test_a_touch_ends_the_wait_of_the_touch_before(window: PollWindow, clock: _Clock) -> None:
    window.touch()
    clock.now += 0.005
    window.touch()  # e.g. the gateway's next request, 5 ms after the last one
    assert window.window == pytest.approx(0.001) and window.grown == 1


def test_without_a_touch_before_it_an_arrival_teaches_nothing(window: PollWindow, clock: _Clock) -> None:
    window.arrived()  # nothing was awaited
    _wait(window, clock, 0.005)
    window.arrived()  # its wait already ended
    clock.now += 0.005
    window.touch()  # nor a touch after it
    assert window.grown == 1 and window.caught == 0 and window.shrunk == 0

    window.touch()
    window.close()  # the owner stopped waiting (e.g. user code got work)
    clock.now += 5.0
    window.arrived()
    assert window.shrunk == 0 and window.window == pytest.approx(0.001)


# --- the loop ----------------------------------------------------------------------------------


async def _grown(window: PollWindow, clock: _Clock) -> int:
    """Teach `window` its most, let the loop settle; the windows opened meanwhile."""
    while window.window < window.most:
        _wait(window, clock, window.most * 0.99)
    window.close()
    await _turns(2)
    assert not window.polling
    return window.opened


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_the_loop_polls_until_the_window_passes_then_sleeps(run: Any) -> None:
    async def main() -> None:
        clock = _Clock()
        window = PollWindow(asyncio.get_running_loop(), 0.005, clock, cpu_clock=clock)
        opened = await _grown(window, clock)
        window.touch()
        await _turns(10)
        assert window.polling and window.turns >= 9  # a turn of its own on every turn of the loop

        clock.now += 0.004
        window.touch()  # traffic again: the window runs from here
        clock.now += 0.004
        await _turns(3)
        assert window.polling

        clock.now += 0.002
        await _turns(2)
        assert not window.polling
        turns = window.turns
        await _turns(10)
        assert window.turns == turns  # nothing scheduled: the loop may sleep
        assert window.opened == opened + 1

        window.touch()  # a new window
        await _turns(2)
        assert window.polling and window.opened == opened + 2

    run(main())


def test_close_ends_the_window_at_the_next_turn() -> None:
    async def main() -> None:
        clock = _Clock()
        window = PollWindow(asyncio.get_running_loop(), 1.0, clock, cpu_clock=clock)
        await _grown(window, clock)
        window.touch()
        await _turns(3)
        assert window.polling
        window.close()
        assert window.closes_at == 0.0
        await _turns(2)
        assert not window.polling

    uvloop.run(main())


class _CpuClock:
    """The loop thread's CPU time: `share` of every second `clock` advances, from `clock.now`."""

    def __init__(self, clock: _Clock) -> None:
        self.clock = clock
        self.share = 1.0
        self.cpu = 0.0
        self._seen = clock.now

    def __call__(self) -> float:
        self.cpu += (self.clock.now - self._seen) * self.share
        self._seen = self.clock.now
        return self.cpu


async def _polling() -> tuple[PollWindow, _Clock, _CpuClock]:
    """A window on the running loop, grown to its most on a fake clock and a
    fake CPU clock, touched and polling (the thread has its CPU to itself)."""
    clock = _Clock()
    cpu = _CpuClock(clock)
    window = PollWindow(asyncio.get_running_loop(), 0.005, clock, cpu_clock=cpu)
    await _grown(window, clock)
    window.touch()
    await _turns(2)
    assert window.polling
    return window, clock, cpu


@pytest.mark.parametrize(
    ("share", "after", "steps_aside"),
    [
        (0.3, 2 * polling.JUDGE_AFTER, True),  # another thread had the CPU most of the time
        (polling.FAIR_SHARE + 0.05, 2 * polling.JUDGE_AFTER, False),  # the CPU was ours
        (0.0, polling.JUDGE_AFTER / 2, False),  # too soon to judge
    ],
)
def test_polling_steps_aside_when_other_threads_want_the_cpu(share: float, after: float, steps_aside: bool) -> None:
    async def main() -> None:
        window, clock, cpu = await _polling()
        learned = window.window
        cpu.share = share
        clock.now += after
        await _turns(2)
        assert window.polling is not steps_aside
        assert window.stepped_aside == int(steps_aside)
        # Stepping aside polls less next time, as a wait that was too long does.
        assert window.window == (learned / 2 if steps_aside else learned)

    uvloop.run(main())


def test_after_stepping_aside_no_window_opens_for_a_while() -> None:
    async def main() -> None:
        window, clock, cpu = await _polling()
        cpu.share = 0.1
        clock.now += 2 * polling.JUDGE_AFTER
        await _turns(2)
        assert window.stepped_aside == 1 and not window.polling and window.window > 0
        cpu.share = 1.0
        opened = window.opened
        clock.now += polling.QUIET_AFTER_CROWDED / 2
        window.touch()  # traffic, but the machine was crowded a moment ago
        await _turns(2)
        assert not window.polling and window.opened == opened
        clock.now += polling.QUIET_AFTER_CROWDED
        window.touch()
        await _turns(2)
        assert window.polling and window.opened == opened + 1

    uvloop.run(main())


def test_a_window_open_for_long_is_judged_stretch_by_stretch() -> None:
    """Steady traffic keeps one window open; a crowded stretch late in it still counts."""

    async def main() -> None:
        window, clock, cpu = await _polling()
        for _ in range(20):  # 20 stretches with the CPU to itself, touched all along
            clock.now += polling.JUDGE_AFTER
            window.touch()
            await _turns(1)
        assert window.polling and window.stepped_aside == 0
        cpu.share = 0.5  # now it shares its CPU
        clock.now += polling.JUDGE_AFTER
        window.touch()
        await _turns(2)
        assert window.stepped_aside == 1 and not window.polling

    uvloop.run(main())


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_a_real_window_sharing_its_cpu_with_a_busy_process_steps_aside() -> None:
    """A busy process on the same CPU as the loop's thread: the window
    notices it lost the CPU to it, and stops polling early."""
    cpu = min(os.sched_getaffinity(0))
    hog = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    mask = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpu})  # this thread only: the hog and the loop share one CPU

        async def main() -> PollWindow:
            window = PollWindow(asyncio.get_running_loop(), 0.2)
            window._window = 0.2  # learned already (the learning is tested above)
            await asyncio.sleep(0.1)  # the hog is running
            window.touch()
            await asyncio.sleep(0.3)
            return window

        window = uvloop.run(main())
    finally:
        os.sched_setaffinity(0, mask)
        hog.kill()
        hog.wait()
    assert window.stepped_aside == 1 and not window.polling


def test_a_real_window_keeps_the_loop_turning_and_then_lets_it_sleep() -> None:
    async def main() -> tuple[float, int, int, bool]:
        # Real time; the thread's CPU time is taken as all of it, so a busy
        # host cannot make the window step aside here (that is tested above).
        window = PollWindow(asyncio.get_running_loop(), 0.1, cpu_clock=time.monotonic)
        while window.window < 0.05:  # answers 60 ms after traffic: the window grows to them
            window.touch()
            await asyncio.sleep(0.06)
            window.arrived()
        window.touch()
        await asyncio.sleep(0.02)  # a timer inside the window: the loop turns meanwhile
        during = window.turns
        await asyncio.sleep(0.5)
        after = window.turns
        await asyncio.sleep(0.1)
        return window.window, during, after - window.turns, window.polling

    learned, during, since, polling_now = uvloop.run(main())
    assert 0.05 <= learned <= 0.1
    assert during > 10
    assert since == 0 and not polling_now


@pytest.mark.parametrize("bad", [-0.001, 1.5, float("nan"), float("inf")])
def test_a_window_is_more_than_zero_and_at_most_a_second(bad: float) -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match=r"0 \(off\) or more than 0 and at most 1\.0 s"):
            PollWindow(loop, bad)
        with pytest.raises(ValueError, match=r"at most 1\.0 s"):
            polling.check_window(bad)
        with pytest.raises(ValueError, match="of 0 is off"):
            PollWindow(loop, 0.0)
    finally:
        loop.close()
    assert polling.check_window(0.0) == 0.0 and polling.check_window(1.0) == 1.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, polling.DEFAULT_WINDOW), ("", polling.DEFAULT_WINDOW), ("0", 0.0), ("2.5", 0.0025), ("1000", 1.0)],
)
def test_window_settings_are_milliseconds(value: str | None, seconds: float) -> None:
    assert polling.parse_window_ms(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "CONNECT_POLL_WINDOW_MS must be a number of milliseconds, not 'abc'"),
        ("-1", "CONNECT_POLL_WINDOW_MS must be between 0 \\(off\\) and 1000 ms, not '-1'"),
        ("1001", "between 0 \\(off\\) and 1000 ms"),
        ("nan", "between 0 \\(off\\) and 1000 ms"),
        ("inf", "between 0 \\(off\\) and 1000 ms"),
    ],
)
def test_bad_window_settings_say_what_is_wrong(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        polling.parse_window_ms(value)


def test_the_environment_sets_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(polling.ENV_VAR, "3")
    assert polling.window_from_env() == pytest.approx(0.003)
    monkeypatch.setenv(polling.ENV_VAR, "0")
    assert polling.window_from_env() == 0.0
    monkeypatch.delenv(polling.ENV_VAR)
    assert polling.window_from_env() == polling.DEFAULT_WINDOW == 0.001


def test_the_summary_says_what_the_window_learned_and_did(window: PollWindow, clock: _Clock) -> None:
    for wait in (0.005, 0.005, 0.0015, 0.5):
        _wait(window, clock, wait)
    assert window.summary() == (
        "poll window 1 ms (up to 16 ms): 1 opened, 0 turns, 0 stepped aside for other threads; "
        "waits caught 1, missed and grown 2, too long and shrunk 1"
    )
