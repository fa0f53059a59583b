"""`PollWindow`: a loop kept polling after traffic, then asleep again; and its settings."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvloop
from websockets.asyncio.client import connect

from connect import polling
from connect.gateway.connection import GatewayWebSocket
from connect.polling import PollWindow


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_the_loop_polls_until_the_window_passes_then_sleeps(run: Any) -> None:
    async def main() -> None:
        clock = _Clock()
        window = PollWindow(asyncio.get_running_loop(), 0.005, clock)
        assert not window.polling
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
        assert window.opened == 1

        window.touch()  # a new window
        await _turns(2)
        assert window.polling and window.opened == 2

    run(main())


def test_close_ends_the_window_at_the_next_turn() -> None:
    async def main() -> None:
        window = PollWindow(asyncio.get_running_loop(), 1.0, _Clock())
        window.touch()
        await _turns(3)
        window.close()
        await _turns(2)
        assert not window.polling

    uvloop.run(main())


def test_a_real_window_keeps_the_loop_turning_and_then_lets_it_sleep() -> None:
    async def main() -> tuple[int, int, bool]:
        window = PollWindow(asyncio.get_running_loop(), 0.05)
        window.touch()
        await asyncio.sleep(0.02)  # a timer inside the window: the loop turns meanwhile
        during = window.turns
        await asyncio.sleep(0.5)
        after = window.turns
        await asyncio.sleep(0.1)
        return during, after - window.turns, window.polling

    during, since, polling_now = uvloop.run(main())
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


@pytest.mark.parametrize(("value", "seconds"), [(None, 0.0), ("", 0.0), ("0", 0.0), ("2.5", 0.0025), ("1000", 1.0)])
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
    monkeypatch.delenv(polling.ENV_VAR)
    assert polling.window_from_env() == 0.0


# --- connections touch the window ------------------------------------------------------------


async def _server_side(*, receive: bool) -> tuple[int, bool]:
    """A real server connection with a window (of a second, with a clock that
    stands still, so it stays open once touched): the client sends one message
    (`receive`) or the server sends one. Returns how many times the server's
    window opened, and whether it polls, before the closing handshake."""
    from websockets.asyncio.server import serve

    window = PollWindow(asyncio.get_running_loop(), 1.0, _Clock())
    done = asyncio.Event()

    async def handler(ws: GatewayWebSocket) -> None:
        ws.poll_window = window
        if receive:
            assert await ws.recv() == b"in"
        else:
            await ws.send_frames([b"out"])
        done.set()
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, create_connection=GatewayWebSocket, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/", compression=None) as client:
            if receive:
                await asyncio.sleep(0.05)
                assert window.opened == 0  # the handshake went before the owner set it
                await client.send(b"in")
            else:
                assert await asyncio.wait_for(client.recv(), 10) == b"out"
            await asyncio.wait_for(done.wait(), 10)
            return window.opened, window.polling


def test_a_message_in_opens_the_window() -> None:
    assert uvloop.run(_server_side(receive=True)) == (1, True)


def test_a_message_out_opens_the_window() -> None:
    assert uvloop.run(_server_side(receive=False)) == (1, True)
