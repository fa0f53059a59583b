"""Event ids derived from `x-inngest-event-id-seed`: a retried send stores its events once."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
from ulid import ULID

from connect.gateway.auth import Keys
from connect.sdk.events import event_id_seed
from protocol.ids import seeded_event_ids
from tests.api.test_fuzz_http import InProcess

SEED = "1767225600000," + base64.b64encode(bytes(range(1, 11))).decode()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    app = InProcess(tmp_path_factory.mktemp("ids") / "ids.db", Keys())
    yield app
    app.close()


def post(api: InProcess, events: list[dict[str, object]], seed: str | None) -> tuple[int, dict[str, object]]:
    headers = {"x-inngest-event-id-seed": seed} if seed is not None else {}
    resp = api.post("/e/key", json.dumps(events).encode(), headers)
    return resp.status_code, resp.json()


def test_a_retried_send_names_the_same_events(api: InProcess) -> None:
    batch = [{"name": "shop/a", "data": {"n": 1}}, {"name": "shop/b", "id": "chosen-by-sender"}, {"name": "shop/c"}]
    status, first = post(api, batch, SEED)
    assert status == 200
    status, again = post(api, batch, SEED)  # the sender's own retry: same body, same seed
    assert status == 200 and again["ids"] == first["ids"]
    ids = first["ids"]
    assert isinstance(ids, list)
    assert ids[1] == "chosen-by-sender"  # an id the sender chose is kept
    assert ULID.from_str(ids[0]).milliseconds == 1767225600000
    assert ids[0] == seeded_event_ids(SEED, 3)[0] and ids[2] == seeded_event_ids(SEED, 3)[2]
    for event_id in ids:
        assert api.loop.run_until_complete(api.store.get_event(event_id)) is not None

    other_seed = event_id_seed(1767225600000)
    status, other = post(api, batch, other_seed)
    assert status == 200 and other["ids"][0] != ids[0]  # a new send is new events
    status, unseeded = post(api, batch, None)
    assert status == 200 and unseeded["ids"][0] not in (ids[0], other["ids"][0])


@pytest.mark.parametrize(
    ("seed", "why"),
    [
        ("", "must be"),
        ("1767225600000", "must be"),
        ("soon," + base64.b64encode(bytes(10)).decode(), "must be"),
        ("-5," + base64.b64encode(bytes(10)).decode(), "must be"),
        (f"{1 << 48}," + base64.b64encode(bytes(10)).decode(), "out of range"),
        ("1767225600000,not base64!", "not base64"),
        ("1767225600000," + base64.b64encode(bytes(9)).decode(), "9 bytes"),
    ],
)
def test_a_malformed_seed_is_refused_and_stores_nothing(api: InProcess, seed: str, why: str) -> None:
    status, body = post(api, [{"name": "shop/refused", "id": f"refused-{len(seed)}-{why}"}], seed)
    assert status == 400 and why in str(body["error"])
    assert api.loop.run_until_complete(api.store.get_event(f"refused-{len(seed)}-{why}")) is None


def test_consecutive_ids_wrap_around_the_random_part() -> None:
    top = "1000," + base64.b64encode(b"\xff" * 10).decode()
    first, second = seeded_event_ids(top, 2)
    assert ULID.from_str(first).bytes[6:] == b"\xff" * 10
    assert ULID.from_str(second).bytes[6:] == bytes(10)
    assert ULID.from_str(second).milliseconds == 1000
    assert len(set(seeded_event_ids(SEED, 1000))) == 1000
