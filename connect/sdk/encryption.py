"""End-to-end encryption of step outputs and event data, readable by Inngest's ``inngest-encryption`` package.

``EncryptionMiddleware`` encrypts on the worker, before anything leaves it, and
decrypts on the worker, after the platform handed it back, so the platform
stores and forwards only ciphertext:

* every step output and the function's return value (``transform_output``);
* the ``encrypted`` field of event data (``event_encryption_field``) of the
  events a function or the client sends (``before_send_events``), and of an
  invoked function's data (``step.invoke(data={"encrypted": ...})``);
* on the way in, stored step outputs and the run's events are decrypted
  (``transform_input``) before the handler sees them: event data encrypted
  as a whole, or the first field of it that is encrypted.

Other event fields stay plain, so triggers, ``if`` expressions, waits and
flow-control keys can still use them: put what must stay secret under the
encrypted field.

The format is the one the official Python and TypeScript encryption
middleware use ("inngest/libsodium"), so functions on either SDK read what
the other wrote: a value ``v`` becomes ``{"__ENCRYPTED__": true,
"__STRATEGY__": "inngest/libsodium", "data": BASE64}``, where BASE64 holds a
24-byte random nonce followed by the XSalsa20-Poly1305 secret box of
``json.dumps(v)``. A key given as text is hashed to 32 bytes with BLAKE2b
(libsodium's ``crypto_generichash``); a key given as bytes is the hex
spelling of the 32-byte key itself.

Key rotation: encrypt with the new key and list the old ones in
``fallback_decryption_keys``; values are decrypted with the first key that
opens them. ``decrypt_only=True`` reads encrypted values and writes plain
ones (to leave encryption). A value no key opens fails the request with
``DecryptionError``, which is retried like any error.

Needs PyNaCl: ``pip install 'connect-platform[encryption]'``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from connect.sdk.errors import SDKError
from connect.sdk.middleware import MiddlewareSync, Opcode, StepMemos, TransformOutputResult
from protocol.payloads import Event

try:
    import nacl.exceptions
    import nacl.secret
    import nacl.utils
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "connect.sdk.encryption needs PyNaCl: pip install 'connect-platform[encryption]' (or pynacl)"
    ) from exc

if TYPE_CHECKING:
    from connect.sdk.client import Client
    from connect.sdk.context import Context, ContextSync
    from connect.sdk.function import Function

__all__ = ["DEFAULT_EVENT_ENCRYPTION_FIELD", "DecryptionError", "EncryptionMiddleware", "is_encrypted"]

#: Marks an encrypted value.
ENCRYPTED_MARKER: Final = "__ENCRYPTED__"
#: Names the scheme an encrypted value uses.
STRATEGY_MARKER: Final = "__STRATEGY__"
#: The scheme this module reads and writes (the official SDKs' name for it).
STRATEGY: Final = "inngest/libsodium"
#: The event data field encrypted by default.
DEFAULT_EVENT_ENCRYPTION_FIELD: Final = "encrypted"

Key = bytes | str


class DecryptionError(SDKError):
    """An encrypted value that none of the keys opens (a wrong or missing key, or damaged data)."""


def is_encrypted(value: object) -> bool:
    """Whether ``value`` is a value encrypted with this scheme."""
    return isinstance(value, dict) and value.get(ENCRYPTED_MARKER) is True and value.get(STRATEGY_MARKER) == STRATEGY


def _box(key: Key) -> nacl.secret.SecretBox:
    if isinstance(key, str):
        raw = hashlib.blake2b(key.encode("utf-8"), digest_size=nacl.secret.SecretBox.KEY_SIZE).digest()
    else:
        raw = bytes.fromhex(key.decode("ascii"))
    if len(raw) != nacl.secret.SecretBox.KEY_SIZE:
        raise ValueError(
            f"an encryption key given as bytes must be the hex spelling of {nacl.secret.SecretBox.KEY_SIZE} bytes"
        )
    return nacl.secret.SecretBox(raw)


class EncryptionMiddleware(MiddlewareSync):
    """Encrypts step outputs and the ``encrypted`` event field with ``secret_key`` (see the module doc).

    Pass it as ``Client(middleware=[EncryptionMiddleware.factory(key)])`` (every
    function and ``client.send``) or as one function's ``middleware``.
    """

    def __init__(
        self,
        client: Client,
        raw_request: object,
        secret_key: Key,
        *,
        decrypt_only: bool = False,
        event_encryption_field: str = DEFAULT_EVENT_ENCRYPTION_FIELD,
        fallback_decryption_keys: Sequence[Key] | None = None,
    ) -> None:
        super().__init__(client, raw_request)
        self._box = _box(secret_key)
        self._boxes = [self._box, *(_box(k) for k in fallback_decryption_keys or ())]
        self._decrypt_only = decrypt_only
        self._field = event_encryption_field

    @classmethod
    def factory(
        cls,
        secret_key: Key,
        *,
        decrypt_only: bool = False,
        event_encryption_field: str = DEFAULT_EVENT_ENCRYPTION_FIELD,
        fallback_decryption_keys: Sequence[Key] | None = None,
    ) -> Callable[[Client, object], EncryptionMiddleware]:
        """A middleware factory with these options, for ``middleware=[...]``."""
        _box(secret_key)  # a bad key is refused here, not at the first request

        def make(client: Client, raw_request: object) -> EncryptionMiddleware:
            return cls(
                client,
                raw_request,
                secret_key,
                decrypt_only=decrypt_only,
                event_encryption_field=event_encryption_field,
                fallback_decryption_keys=fallback_decryption_keys,
            )

        return make

    # --- the scheme -----------------------------------------------------------------

    def encrypt(self, value: object) -> dict[str, Any]:
        """The encrypted form of a JSON value (an already encrypted one is kept as it is)."""
        if isinstance(value, dict) and value.get(ENCRYPTED_MARKER) is True:
            self.client.logger.warning("not encrypting a value that is already encrypted")
            return value
        sealed = self._box.encrypt(json.dumps(value).encode("utf-8"))  # nonce + ciphertext
        return {ENCRYPTED_MARKER: True, STRATEGY_MARKER: STRATEGY, "data": base64.b64encode(bytes(sealed)).decode()}

    def decrypt(self, value: Any) -> Any:
        """The plain value of an encrypted one; any other value is returned as it is."""
        if not is_encrypted(value):
            return value
        sealed = value.get("data")
        if not isinstance(sealed, str):
            return value
        try:
            raw = base64.b64decode(sealed, validate=True)
        except ValueError:
            raise DecryptionError("could not decrypt data: it is not base64") from None
        for box in self._boxes:
            try:
                return json.loads(box.decrypt(raw))
            except nacl.exceptions.CryptoError:
                continue
        raise DecryptionError("could not decrypt data: no key opens it (check the secret key and the fallback keys)")

    def _decrypt_event_data(self, data: Mapping[str, Any]) -> dict[str, Any]:
        if is_encrypted(data):
            # Encrypted as a whole; an invoke's unencrypted fields (`_inngest`) sit beside it.
            plain = self.decrypt(data)
            if not isinstance(plain, dict):
                raise DecryptionError("encrypted event data is not an object")
            beside = {k: v for k, v in data.items() if k not in (ENCRYPTED_MARKER, STRATEGY_MARKER, "data")}
            return {**beside, **plain}
        # The expected field first; a producer may have used another one.
        for key in sorted(data, key=lambda k: k != self._field):
            if is_encrypted(data[key]):
                return {**data, key: self.decrypt(data[key])}
        return dict(data)

    # --- hooks ----------------------------------------------------------------------

    def before_send_events(self, events: list[Event]) -> None:
        if self._decrypt_only:
            return
        for event in events:
            plain = event.data.get(self._field)
            if plain is not None:
                event.data = {**event.data, self._field: self.encrypt(plain)}

    def transform_input(self, ctx: Context | ContextSync, function: Function, steps: StepMemos) -> None:
        for memo in steps.values():
            memo.data = self.decrypt(memo.data)
        ctx.event.data = self._decrypt_event_data(ctx.event.data)
        for event in ctx.events:
            event.data = self._decrypt_event_data(event.data)

    def transform_output(self, result: TransformOutputResult) -> None:
        if self._decrypt_only:
            return
        if result.has_output():
            result.output = self.encrypt(result.output)
        step = result.step
        if step is None or step.op is not Opcode.INVOKE or step.opts is None:
            return
        payload = step.opts.get("payload")
        if not isinstance(payload, dict):
            return
        data = payload.get("data")
        if isinstance(data, dict) and self._field in data:
            payload["data"] = {**data, self._field: self.encrypt(data[self._field])}
