"""Shutdown signals for a worker process.

The handler is a plain `signal.signal` handler, not an event-loop one: it
runs in the main thread between bytecodes even while user code blocks the
event loop, so draining (and `/ready` turning 503) starts at once. The first
signal starts a graceful drain; a second one exits immediately.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType

log = logging.getLogger("connect.worker")

DEFAULT_SIGNALS: tuple[str, ...] = ("SIGTERM", "SIGINT")


def install(names: Sequence[str], request_close: Callable[[], None]) -> bool:
    """Route `names` to `request_close`; False when not possible (not the main thread)."""
    if not names:
        return False
    if threading.current_thread() is not threading.main_thread():
        log.warning("shutdown signals can only be handled in the main thread; not installed")
        return False
    received = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        name = signal.Signals(signum).name
        if received > 1:
            log.warning("second %s: exiting immediately", name)
            logging.shutdown()
            os._exit(1)
        log.info("%s received: draining (send it again to exit immediately)", name)
        request_close()

    for name in names:
        sig = getattr(signal, name, None)
        if not isinstance(sig, signal.Signals):
            raise ValueError(f"unknown signal {name!r}")
        signal.signal(sig, on_signal)
    return True
