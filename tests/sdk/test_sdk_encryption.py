"""EncryptionMiddleware: the official `inngest-encryption` package reads what it writes and the other way round."""

from __future__ import annotations

import json
import logging
from typing import Any

import inngest
import pytest
from inngest_encryption import EncryptionMiddleware as Official

from connect.sdk import Client, Context, Event, Step, TriggerEvent
from connect.sdk.encryption import DecryptionError, EncryptionMiddleware, is_encrypted
from connect.sdk.execution import Invocation, execute
from connect.sdk.middleware import Opcode, StepMemos, TransformOutputResult, TransformOutputStepInfo
from protocol.payloads import STATUS_DONE, STATUS_NOT_COMPLETED, hash_step_id
from tests.sdk.conftest import make_payload

pytestmark = pytest.mark.anyio

KEY = "my secret key"
HEX_KEY = bytes(range(32)).hex().encode()
VALUES: list[Any] = [{"a": 1, "b": [1, "x", None]}, "text", 3, None, ["é", {"n": 1.5}]]


def ours(key: Any = KEY, **options: Any) -> EncryptionMiddleware:
    return EncryptionMiddleware(Client("app"), None, key, **options)


def theirs(key: Any = KEY, **options: Any) -> Any:
    return Official(inngest.Inngest(app_id="app", is_production=False), None, key, **options)


@pytest.mark.parametrize("key", [KEY, HEX_KEY], ids=["text", "hex-bytes"])
@pytest.mark.parametrize("value", VALUES)
def test_each_reads_what_the_other_wrote(key: Any, value: Any) -> None:
    mine, official = ours(key), theirs(key)
    sealed = mine.encrypt(value)
    assert is_encrypted(sealed) and set(sealed) == {"__ENCRYPTED__", "__STRATEGY__", "data"}
    assert official._decrypt(sealed) == value
    assert mine.decrypt(official._encrypt(value)) == value


def test_a_wrong_key_fails_and_a_fallback_key_opens_old_values() -> None:
    old = ours("old key").encrypt({"x": 1})
    with pytest.raises(DecryptionError):
        ours("new key").decrypt(old)
    rotated = ours("new key", fallback_decryption_keys=["old key"])
    assert rotated.decrypt(old) == {"x": 1}
    assert theirs("old key")._decrypt(ours("old key").encrypt(2)) == 2
    with pytest.raises(DecryptionError):
        ours("old key").decrypt(rotated.encrypt(3))  # new values use the new key


def test_a_bad_bytes_key_is_refused_when_the_factory_is_made() -> None:
    with pytest.raises(ValueError):
        EncryptionMiddleware.factory(b"not hex")
    with pytest.raises(ValueError):
        EncryptionMiddleware.factory(b"abcd")


def test_plain_values_pass_through_and_encrypted_ones_are_not_encrypted_twice() -> None:
    mine = ours()
    assert mine.decrypt({"data": 1}) == {"data": 1}
    sealed = mine.encrypt(1)
    assert mine.encrypt(sealed) is sealed


def test_hooks_match_the_official_middleware() -> None:
    """Events to send, stored results in, outputs and invoke payloads out: each SDK's
    middleware does the same to the same input (compared after decrypting)."""
    mine, official = ours(), theirs()
    # before_send_events: only the `encrypted` field.
    event = Event(name="a", data={"encrypted": {"s": 1}, "plain": 2})
    their_event = inngest.Event(name="a", data={"encrypted": {"s": 1}, "plain": 2})
    mine.before_send_events([event])
    official.before_send_events([their_event])
    assert event.data["plain"] == their_event.data["plain"] == 2
    assert official._decrypt(event.data["encrypted"]) == mine.decrypt(their_event.data["encrypted"]) == {"s": 1}
    # transform_output: the output, and an invoke's payload data field.
    for step in (None, TransformOutputStepInfo("inv", Opcode.INVOKE, {"payload": {"data": {"encrypted": 5}}})):
        result = TransformOutputResult(error=None, output={"o": 1}, step=step)
        mine.transform_output(result)
        assert official._decrypt(result.output) == {"o": 1}
        if step is not None:
            assert step.opts is not None
            assert official._decrypt(step.opts["payload"]["data"]["encrypted"]) == 5  # type: ignore[index]
    # decrypt_only writes plain values.
    result = TransformOutputResult(error=None, output=7, step=None)
    ours(decrypt_only=True).transform_output(result)
    assert result.output == 7


async def test_a_function_sees_plaintext_and_replies_with_ciphertext() -> None:
    client = Client("app", middleware=[EncryptionMiddleware.factory(KEY)])
    seen: list[Any] = []

    @client.create_function(fn_id="f", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> Any:
        first = await step.run("first", lambda: "unused")
        seen.append((ctx.event.data, ctx.events[0].data, first))
        return await step.run("second", lambda: {"got": first})

    official = theirs()
    event = {
        "name": "test/go",
        "data": {"encrypted": official._encrypt({"card": "4242"}), "plain": 1},
        "id": "e1",
        "ts": 1,
        "user": {},
    }
    steps = {hash_step_id("first"): {"data": official._encrypt({"a": 1})}}
    outcome = await execute(client, {"app-f": fn}, Invocation(make_payload(steps=steps, event=event), "app-f", "step"))
    assert seen == [({"encrypted": {"card": "4242"}, "plain": 1},) * 2 + ({"a": 1},)]
    assert outcome.status == STATUS_NOT_COMPLETED
    [op] = json.loads(outcome.body)
    assert op["op"] == "StepRun" and official._decrypt(op["data"]) == {"got": {"a": 1}}

    steps[hash_step_id("second")] = {"data": op["data"]}
    done = await execute(client, {"app-f": fn}, Invocation(make_payload(steps=steps, event=event), "app-f", "step"))
    assert done.status == STATUS_DONE
    assert official._decrypt(json.loads(done.body)) == {"got": {"a": 1}}


def test_step_memos_keep_errors_and_unwrapped_values() -> None:
    memos = StepMemos.from_raw(
        {"a": {"data": 1}, "b": {"error": {"name": "E", "message": "m"}}, "c": None, "d": {"x": 1}}
    )
    assert [(m.data, m.error is not None) for m in memos.values()] == [
        (1, False),
        (None, True),
        (None, False),
        ({"x": 1}, False),
    ]
    raw = memos.to_raw()
    assert raw["b"]["error"]["name"] == "E" and raw["d"] == {"data": {"x": 1}}


async def test_a_memo_no_key_opens_fails_the_request_with_the_error() -> None:
    client = Client("app", middleware=[EncryptionMiddleware.factory("other key")], logger=logging.getLogger("quiet"))

    @client.create_function(fn_id="f", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> Any:
        return await step.run("first", lambda: 1)

    steps = {hash_step_id("first"): {"data": ours().encrypt(1)}}
    outcome = await execute(client, {"app-f": fn}, Invocation(make_payload(steps=steps), "app-f", "step"))
    body = json.loads(outcome.body)
    assert body["name"] == "DecryptionError" and not outcome.no_retry
