"""Keys and session tokens.

`Keys` says who may do what: in open mode (`connect dev`) nothing is checked;
in production (`connect serve`) workers present `Bearer <hashed signing key>`
on `/v0/connect/*`, REST clients present the signing key, and events need a
known event key. A fallback signing key is accepted beside the primary one
while keys rotate. Every comparison is constant-time.

Session tokens are HS256 JWTs with a 5-minute expiry, issued by
`/v0/connect/start` and checked in the handshake. Open mode signs them with
a public development secret; production derives the secret from the signing
key, so the dev secret can never authenticate a production worker.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import jwt

from protocol import ids, limits

_PREFIX = re.compile(r"^signkey-\w+-")
_TOKEN_CONTEXT = b"connect session token v1"


def _bare(key: str) -> str:
    return _PREFIX.sub("", key.strip())


def hash_signing_key(key: str) -> str:
    """The bearer form of a signing key: sha256 of the hex-decoded key part."""
    return hashlib.sha256(bytes.fromhex(_bare(key))).hexdigest()


def validate_signing_key(key: str) -> str:
    """A signing key is `[signkey-<env>-]<hex>`; raise ValueError otherwise."""
    bare = _bare(key)
    if len(bare) < 16:
        raise ValueError("a signing key needs at least 16 hex digits")
    try:
        bytes.fromhex(bare)
    except ValueError as exc:
        raise ValueError("a signing key must be hexadecimal (optionally prefixed signkey-<env>-)") from exc
    return key


def bearer_matches(presented: str, signing_key: str) -> bool:
    """Accept the raw key or its hash, with or without a `signkey-…-` prefix."""
    token = _bare(presented)
    bare = _bare(signing_key)
    try:
        hashed = hash_signing_key(bare)
    except ValueError:
        hashed = ""
    raw_ok = hmac.compare_digest(token.encode(), bare.encode())
    hashed_ok = bool(hashed) and hmac.compare_digest(token.encode(), hashed.encode())
    return raw_ok or hashed_ok


def session_secret(signing_key: str) -> bytes:
    """The JWT secret derived from a signing key (HMAC, so it reveals nothing of the key)."""
    return hmac.new(bytes.fromhex(_bare(signing_key)), _TOKEN_CONTEXT, hashlib.sha256).digest()


def _dev_secret() -> bytes:
    # HS256 wants at least 32 key bytes: use the SHA-256 of the public dev secret.
    return hashlib.sha256(limits.DEV_JWT_SECRET.encode()).digest()


@dataclass(frozen=True)
class Keys:
    """The keys a server accepts. No signing key means open mode."""

    signing_keys: tuple[str, ...] = ()
    event_keys: frozenset[str] = field(default_factory=frozenset)
    env: str = "dev"

    @classmethod
    def production(
        cls, signing_key: str, fallback: str | None, event_keys: Iterable[str], env: str = "production"
    ) -> Keys:
        keys = tuple(validate_signing_key(k) for k in (signing_key, fallback) if k)
        events = frozenset(k.strip() for k in event_keys if k.strip())
        if not events:
            raise ValueError("production needs at least one event key")
        return cls(keys, events, env)

    @property
    def open(self) -> bool:
        return not self.signing_keys

    def authorized(self, authorization: str | None) -> bool:
        """An `Authorization: Bearer …` header carrying a signing key (raw or hashed)."""
        if self.open:
            return True
        if not authorization or not authorization.lower().startswith("bearer "):
            return False
        token = authorization[7:].strip()
        # Check every key even after a match, so timing does not tell which matched.
        results = [bearer_matches(token, key) for key in self.signing_keys]
        return any(results)

    def event_key_ok(self, key: str) -> bool:
        if self.open:
            return True
        results = [hmac.compare_digest(key.encode(), known.encode()) for known in sorted(self.event_keys)]
        return any(results)

    def token_issuer(self, ttl: float = limits.SESSION_TOKEN_TTL) -> TokenIssuer:
        secrets = [session_secret(k) for k in self.signing_keys] if self.signing_keys else [_dev_secret()]
        return TokenIssuer(secrets, env=self.env, ttl=ttl)


class TokenIssuer:
    """Issues tokens with the first secret; accepts tokens signed with any
    (the fallback key's secret keeps workers connected during a rotation)."""

    def __init__(
        self, secrets: list[bytes] | None = None, env: str = "dev", ttl: float = limits.SESSION_TOKEN_TTL
    ) -> None:
        self._secrets = secrets or [_dev_secret()]
        self.env = env
        self.ttl = ttl

    def issue(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        claims: dict[str, Any] = {
            "iss": limits.JWT_ISSUER,
            "aud": [limits.JWT_AUDIENCE],
            "sub": "self-hosted",
            "env": self.env,
            "entitlements": {"appsPerConnection": limits.APPS_PER_CONNECTION},
            "iat": int(now),
            "exp": int(now + self.ttl),
            "jti": ids.new_ulid(),
        }
        return jwt.encode(claims, self._secrets[0], algorithm="HS256")

    def verify(self, token: str) -> bool:
        """Valid signature (HS256 only), issuer, audience, not expired, this environment."""
        if not token:
            return False
        for secret in self._secrets:
            try:
                claims = jwt.decode(
                    token,
                    secret,
                    algorithms=["HS256"],
                    audience=limits.JWT_AUDIENCE,
                    issuer=limits.JWT_ISSUER,
                    options={"require": ["exp", "iat", "iss", "aud"]},
                )
            except jwt.PyJWTError:
                continue
            return bool(claims.get("env") == self.env)
        return False
