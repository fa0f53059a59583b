"""The metrics' labels stay bounded, and every registry is the process's own.

The API is served in process over a real SQLite store (as in
`tests/api/test_fuzz_http.py`); what it counts is read back through
`/metrics` with prometheus-client's parser.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from connect.api.app import ApiConfig, create_api
from connect.executor import Executor
from connect.gateway.auth import Keys
from connect.gateway.dispatcher import GatewayDispatcher
from connect.metrics import PlatformMetrics
from connect.metrics.platform import skip_reason
from connect.store import SqliteStore
from connect.store.start_gates import RateLimit, Singleton, StartGate


def _http_answers(text: str) -> dict[tuple[str, str], float]:
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "connect_http_responses_total":
                found[(sample.labels["route"], sample.labels["status"])] = sample.value
    return found


def test_http_answers_are_counted_by_route_template_never_by_path(tmp_path: Path) -> None:
    async def go() -> dict[tuple[str, str], float]:
        store = await SqliteStore.open(tmp_path / "labels.db")
        dispatcher = GatewayDispatcher(store)
        metrics = PlatformMetrics()
        executor = Executor(store, dispatcher, metrics=metrics.runs)
        await executor.start()
        app = create_api(executor, dispatcher, Keys().token_issuer(), ApiConfig(gateway_port=1), metrics=metrics)
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
                for run_id in ("01AAA", "01BBB", "01CCC"):
                    assert (await http.get(f"/v1/runs/{run_id}")).status_code == 404
                assert (await http.get("/no/such/path/01DDD")).status_code == 404
                assert (await http.delete("/v1/runs/01EEE")).status_code == 405
                assert (await http.post("/e/key", json={"name": "labels/event"})).status_code == 200
                assert (await http.post("/e/key", content=b"{")).status_code == 400
                return _http_answers((await http.get("/metrics")).text)
        finally:
            await executor.stop()
            await store.close()

    answers = asyncio.run(go())
    assert answers[("/v1/runs/{run_id}", "404")] == 3
    assert answers[("unmatched", "404")] == 1
    assert answers[("/v1/runs/{run_id}", "405")] == 1
    assert answers[("/e/{event_key}", "200")] == 1
    assert answers[("/e/{event_key}", "400")] == 1
    assert not any("01" in route for route, _ in answers)


def test_skip_reasons_are_the_gate_kinds() -> None:
    singleton = Singleton(key="k", mode="skip")
    assert skip_reason(StartGate("r", "f", singleton=singleton)) == "singleton"
    assert skip_reason(StartGate("r", "f", rate_limit=RateLimit("k", 1, 1000))) == "rate_limit"
    assert skip_reason(StartGate("r", "f", rate_limit=RateLimit("k", 1, 1000, idempotency=True))) == "idempotency"
    assert skip_reason(None) == "unknown"


def test_platform_metrics_never_use_the_global_registry() -> None:
    first, second = PlatformMetrics(), PlatformMetrics()  # two processes' worth: no clash
    first.events_received.inc(3)
    assert second.registry.get_sample_value("connect_events_received_total") == 0
    assert first.registry.get_sample_value("connect_events_received_total") == 3
    assert prometheus_client.REGISTRY.get_sample_value("connect_events_received_total") is None


def test_a_scope_without_its_route_finds_the_template_itself() -> None:
    """As with a Starlette release whose router does not name the route in the scope."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from connect.metrics.http_answers import _matching_route

    async def endpoint(request: object) -> Response:
        return Response()

    app = Starlette(routes=[Route("/v1/runs/{run_id}", endpoint, methods=["GET"])])

    def scope(method: str, path: str) -> dict[str, object]:
        return {"type": "http", "method": method, "path": path, "root_path": "", "app": app, "headers": []}

    found = _matching_route(scope("GET", "/v1/runs/01AAA"))
    assert getattr(found, "path", None) == "/v1/runs/{run_id}"
    assert getattr(_matching_route(scope("POST", "/v1/runs/01AAA")), "path", None) == "/v1/runs/{run_id}"
    assert _matching_route(scope("GET", "/elsewhere")) is None
