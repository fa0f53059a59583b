"""`connect dev` and `connect serve`: every role in one process over one store.

Start order: store -> executor (resumes runs in flight) -> gateway -> API.
SIGTERM/SIGINT: the gateway drains (workers are told to reconnect), then the
API stops, run tasks are cancelled (their state stays in the store) and the
store closes. Starting again on the same database continues every run.
`POST /v0/connect/drain` on the gateway port does the same; the process then
exits with EXIT_DRAINED_ON_REQUEST instead of 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from connect.api.workers import LiveWorkers
from connect.binding import bind_failure
from connect.gateway.server import DrainCause
from connect.roles.api import ApiNotStarted, ApiRole
from connect.roles.executor import ExecutorRole
from connect.roles.gateway import GatewayRole, gateway_dispatcher
from connect.roles.metrics_port import MetricsPort, MetricsPortNotStarted
from connect.roles.settings import PlatformSettings, default_process_id
from connect.roles.store import describe_store, open_store
from protocol import limits

log = logging.getLogger("connect.dev")

#: Exit status after a drain asked for over HTTP (EX_TEMPFAIL in sysexits.h):
#: not 0, which a supervisor that restarts on failure takes for "leave it
#: down" (nobody told the supervisor), and not 1, a crash. After SIGTERM or
#: SIGINT, which come from the supervisor or the operator, the status is 0.
EXIT_DRAINED_ON_REQUEST = 75


class ProcessRoot:
    """What every process's composition root shares: stop requests (SIGTERM,
    SIGINT, a drain asked for over HTTP) and the exit status they lead to."""

    def __init__(self, settings: PlatformSettings) -> None:
        self.settings = settings
        self._stop = asyncio.Event()
        self._cause: DrainCause | None = None

    def request_stop(self, cause: DrainCause = "signal") -> None:
        if self._cause is None:  # the first request decides the exit status
            self._cause = cause
        self._stop.set()

    async def until_stopped(self) -> None:
        """Wait for SIGTERM, SIGINT or `request_stop`."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self._stop.wait()

    def exit_status(self) -> int:
        return EXIT_DRAINED_ON_REQUEST if self._cause == "request" else 0

    async def start_metrics_port(self) -> MetricsPort | None:
        """`settings.metrics_port`'s server, started (None when not asked for)."""
        s = self.settings
        if s.metrics_port is None:
            return None
        port = MetricsPort(s.host, s.metrics_port, s.metrics, s.keys)
        await port.start()
        log.info("%s metrics on http://%s:%d/metrics", s.name, s.host, port.port)
        return port


class DevServer(ProcessRoot):
    async def run(self) -> int:
        """Serve until stopped; the process's exit status (0, or
        EXIT_DRAINED_ON_REQUEST after a drain asked for over HTTP)."""
        s = self.settings
        store = await open_store(s)
        tokens = s.keys.token_issuer()
        dispatcher = gateway_dispatcher(s, store)
        executor = ExecutorRole(s, store, dispatcher)
        gateway = GatewayRole(s, dispatcher, tokens, executor.executor.sync_app, on_drain_requested=self.request_stop)
        await executor.start()
        try:
            await gateway.start()
        except OSError as exc:
            await executor.stop()
            await store.close()
            raise SystemExit(
                bind_failure("the worker gateway", "--gateway-port", s.host, s.gateway_port, exc)
            ) from None
        api = ApiRole(
            s,
            executor.executor,
            dispatcher,
            tokens,
            gateway_port=gateway.port,
            is_ready=lambda: gateway.ready,
            admit_connection=gateway.server.admit,
            workers=LiveWorkers(dispatcher, s.process_id or default_process_id()),
        )
        metrics_port: MetricsPort | None = None
        try:
            # Before the API: once `/health` answers there, every port is up.
            metrics_port = await self.start_metrics_port()
            await api.start()
        except (ApiNotStarted, MetricsPortNotStarted) as exc:
            await api.stop()
            if metrics_port is not None:
                await metrics_port.stop()
            await gateway.close()
            await executor.stop()
            await store.close()
            raise SystemExit(str(exc)) from None
        mode = (
            "open mode: no keys required"
            if s.keys.open
            else f"production mode: environment {s.keys.env!r}, signing and event keys required"
        )
        log.debug("poll window %s", f"up to {s.poll_window * 1000:g} ms" if s.poll_window > 0 else "off")
        api_url = f"http://{s.host}:{api.port}"
        gateway_url = f"ws://{s.host}:{gateway.port}{limits.CONNECT_PATH}"
        log.info(
            "%s ready: api=%s gateway=%s %s (%s)",
            s.name,
            api_url,
            gateway_url,
            describe_store(s),
            mode,
            extra={"api_url": api_url, "gateway_url": gateway_url, "store": describe_store(s)},
        )
        await self.until_stopped()
        log.info("%s stopping: draining gateway (up to %.0fs)", s.name, s.drain_timeout)
        await gateway.drain()
        log.info("gateway drained")
        await api.stop()
        if metrics_port is not None:
            await metrics_port.stop()
        await gateway.close()
        await executor.stop()
        await store.close()
        code = self.exit_status()
        log.info("%s stopped (exit status %d)", s.name, code)
        return code
