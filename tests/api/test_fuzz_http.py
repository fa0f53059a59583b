"""Random and mutated bodies against the HTTP endpoints, served in process by
the real app over a real SQLite store: every answer is specific, never a 500."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from connect.api.app import ApiConfig, create_api
from connect.executor import Executor
from connect.gateway.auth import Keys, hash_signing_key
from connect.gateway.dispatcher import GatewayDispatcher
from connect.store import SqliteStore
from protocol import connect_pb2 as pb
from tests.fuzz_settings import fuzz

KEY = "signkey-test-00112233445566778899aabbccddeeff"


class InProcess:
    """The API with its real collaborators on a private event loop."""

    def __init__(self, db: Path, keys: Keys) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = self.loop.run_until_complete(SqliteStore.open(db))
        dispatcher = GatewayDispatcher(self.store)
        self.executor = Executor(self.store, dispatcher)
        self.loop.run_until_complete(self.executor.start())
        app = create_api(self.executor, dispatcher, keys.token_issuer(), ApiConfig(gateway_port=1), keys=keys)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.loop.run_until_complete(self.client.post(path, content=body, headers=headers or {}))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.run_until_complete(self.executor.stop())
        self.loop.run_until_complete(self.store.close())
        self.loop.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    app = InProcess(tmp_path_factory.mktemp("fuzz") / "fuzz.db", Keys())
    yield app
    app.close()


@pytest.fixture(scope="module")
def prod_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    app = InProcess(tmp_path_factory.mktemp("fuzzprod") / "fuzz.db", Keys.production(KEY, None, ["ek"]))
    yield app
    app.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
event_like = st.fixed_dictionaries(
    {}, optional={"name": st.text(max_size=12) | json_values, "data": json_values, "id": json_values, "ts": json_values}
)
bodies = (
    st.binary(max_size=256)
    | json_values.map(lambda v: json.dumps(v).encode())
    | event_like.map(lambda v: json.dumps(v).encode())
    | st.lists(event_like, max_size=4).map(lambda v: json.dumps(v).encode())
)


@fuzz
@given(bodies)
def test_event_api_answers_specifically(api: InProcess, body: bytes) -> None:
    resp = api.post("/e/key", body)
    assert resp.status_code in (200, 400, 413), (resp.status_code, resp.text)
    payload = resp.json()
    if resp.status_code == 200:
        assert isinstance(payload["ids"], list)
    else:
        assert payload["error"]


@fuzz
@given(st.binary(max_size=512))
def test_start_and_flush_answer_specifically(api: InProcess, body: bytes) -> None:
    start = api.post("/v0/connect/start", body)
    assert start.status_code in (200, 400), start.text
    if start.status_code == 200:
        assert pb.StartResponse.FromString(start.content).gateway_endpoint.startswith("ws://")
    flush = api.post("/v0/connect/flush", body)
    assert flush.status_code in (200, 400), flush.text


@fuzz
@given(st.binary(max_size=64), st.text(max_size=80))
def test_production_rejects_without_keys(prod_api: InProcess, body: bytes, bearer: str) -> None:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer.isascii() and bearer.isprintable() else {}
    assert prod_api.post("/v0/connect/start", body, headers).status_code == 401
    assert prod_api.post("/v0/connect/flush", body, headers).status_code == 401
    assert prod_api.post("/e/not-a-key", body).status_code == 401


def test_production_accepts_the_hashed_key(prod_api: InProcess) -> None:
    headers = {"Authorization": f"Bearer {hash_signing_key(KEY)}"}
    assert prod_api.post("/v0/connect/start", b"", headers).status_code == 200
