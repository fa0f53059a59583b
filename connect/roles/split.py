"""`connect serve --role ...` with some of the roles: this process's share of
a platform whose other processes run the rest, all sharing one PostgreSQL.

Each role here is its own process-level composition (`start_api_process`,
`start_gateway_process`, `start_executor_process`): it keeps no state another
process needs and registers itself, with a heartbeat and a TTL, in the
store's process registry, so the others know it is alive.

Start order: store -> executor (claims the runs nobody drives) -> gateway ->
API, as in `DevServer`. SIGTERM/SIGINT, or `POST /v0/connect/drain` on the
gateway port: the gateway drains first (it turns `/ready` to 503, tells its
workers to move to another gateway and waits for the steps in flight there),
then the API stops taking requests, then the executor releases its runs for
the others to claim at once, and the store closes.
"""

from __future__ import annotations

import logging

from connect.binding import bind_failure
from connect.roles.api import ApiNotStarted, ApiProcess, start_api_process
from connect.roles.dev import ProcessRoot
from connect.roles.executor import ExecutorProcess, start_executor_process
from connect.roles.gateway import GatewayProcess, start_gateway_process
from connect.roles.settings import ROLES, PlatformSettings, default_process_id
from connect.roles.store import describe_store, open_store

log = logging.getLogger("connect.roles")


class RolesServer(ProcessRoot):
    """Runs `settings.roles` (not all of them) until stopped."""

    def __init__(self, settings: PlatformSettings) -> None:
        if settings.process_id is None:
            settings.process_id = default_process_id()
        if settings.executor_id is None:
            settings.executor_id = settings.process_id
        super().__init__(settings)

    async def run(self) -> int:
        s = self.settings
        store = await open_store(s)
        executor: ExecutorProcess | None = None
        gateway: GatewayProcess | None = None
        api: ApiProcess | None = None
        try:
            if "executor" in s.roles:
                executor = await start_executor_process(s, store)
            if "gateway" in s.roles:
                gateway = await start_gateway_process(s, store, on_drain_requested=self.request_stop)
            if "api" in s.roles:
                api = await start_api_process(s, store)
        except OSError as exc:
            if gateway is not None:
                await gateway.close()
            if executor is not None:
                await executor.stop()
            await store.close()
            raise SystemExit(
                bind_failure("the worker gateway", "--gateway-port", s.host, s.gateway_port, exc)
            ) from None
        except ApiNotStarted as exc:
            if gateway is not None:
                await gateway.close()
            if executor is not None:
                await executor.stop()
            await store.close()
            raise SystemExit(f"{s.name}: {exc}") from None
        parts = []
        if api is not None:
            parts.append(f"api=http://{s.host}:{api.port}")
        if gateway is not None:
            parts.append(f"gateway={gateway.url}")
        if executor is not None:
            parts.append(f"executor={s.executor_id}")
        roles = ",".join(role for role in ROLES if role in s.roles)
        log.info(
            "%s ready: roles=%s process=%s %s %s",
            s.name,
            roles,
            s.process_id,
            " ".join(parts),
            describe_store(s),
            extra={
                "api_url": f"http://{s.host}:{api.port}" if api is not None else None,
                "gateway_url": gateway.url if gateway is not None else None,
                "store": describe_store(s),
            },
        )
        await self.until_stopped()
        if gateway is not None:
            log.info("%s stopping: draining gateway (up to %.0fs)", s.name, s.drain_timeout)
            await gateway.drain()
            log.info("gateway drained")
        if api is not None:
            await api.stop()
            log.debug("api stopped")
        if gateway is not None:
            await gateway.close()
            log.debug("gateway closed")
        if executor is not None:
            await executor.stop()
            log.debug("executor stopped")
        await store.close()
        code = self.exit_status()
        log.info("%s stopped (exit status %d)", s.name, code)
        return code
