"""The dashboard's page and assets as a real `connect dev` / `connect serve` serves them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import DevServer


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("dash-dev")).start()
    yield server
    server.stop()


def test_the_page_is_served_at_root_with_cache_and_security_headers(dev: DevServer) -> None:
    page = httpx.get(f"{dev.url}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/dashboard/js/main.js">' in page.text
    assert page.headers["cache-control"] == "no-cache"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    etag = page.headers["etag"]
    again = httpx.get(f"{dev.url}/", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert httpx.get(f"{dev.url}/", headers={"If-None-Match": '"other"'}).status_code == 200


def test_every_module_the_page_imports_is_served(dev: DevServer) -> None:
    static = Path(__file__).resolve().parents[2] / "connect" / "api" / "dashboard" / "static"
    files = [p.relative_to(static).as_posix() for p in static.rglob("*") if p.is_file()]
    assert "js/main.js" in files and "js/views/run.js" in files
    for name in files:
        resp = httpx.get(f"{dev.url}/dashboard/{name}")
        assert resp.status_code == 200, name
        assert resp.content == (static / name).read_bytes()
        if name.endswith(".js"):
            assert resp.headers["content-type"].startswith("text/javascript")
        assert resp.headers["cache-control"] == "no-cache"


def test_nothing_outside_the_shipped_files_is_served(dev: DevServer) -> None:
    for path in ("/dashboard/nope.js", "/dashboard/../app.py", "/dashboard/%2e%2e/app.py", "/dashboard/"):
        resp = httpx.get(f"{dev.url}{path}")
        assert resp.status_code == 404, path
        assert resp.headers["content-type"] == "application/json"
    assert httpx.post(f"{dev.url}/").status_code == 405


def test_under_serve_the_page_loads_without_a_key_and_the_api_does_not(tmp_path: Path) -> None:
    server = DevServer(
        tmp_path,
        command="serve",
        extra=["--signing-key", "signkey-prod-" + "ab" * 32, "--event-key", "dash-event-key"],
    ).start()
    try:
        assert httpx.get(f"{server.url}/").status_code == 200
        assert httpx.get(f"{server.url}/dashboard/js/main.js").status_code == 200
        assert httpx.get(f"{server.url}/v1/functions").status_code == 401
    finally:
        server.stop()
