"""`GET /openapi.json`: a valid OpenAPI 3.1 document naming every `/v1` route of the app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from connect.api.app import ApiConfig, create_api
from connect.gateway.auth import TokenIssuer
from tests.e2e.harness import DevServer


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("openapi")).start()
    yield server
    server.stop()


def app_routes() -> set[tuple[str, str]]:
    """(method, path) of every `/v1` route `create_api` serves."""
    app = create_api(cast(Any, None), cast(Any, None), TokenIssuer(), ApiConfig(gateway_port=1))
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, Route) and route.path.startswith("/v1/"):
            found |= {(method.lower(), route.path) for method in route.methods or () if method != "HEAD"}
    return found


def test_the_document_is_valid_openapi_3_1_and_names_every_v1_route(dev: DevServer) -> None:
    resp = httpx.get(f"{dev.url}/openapi.json", timeout=30)
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    document = resp.json()
    validate(document)  # raises on anything that is not OpenAPI 3.1
    assert document["openapi"] == "3.1.0"
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    routes = app_routes()
    assert len(routes) >= 16
    assert routes - documented == set(), "routes missing from /openapi.json"
    assert documented - routes == set(), "/openapi.json documents routes the app does not serve"
