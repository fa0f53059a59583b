"""Session tokens issued by /v0/connect/start and checked in the handshake.

HS256 JWTs with a 5-minute expiry. `connect dev` signs with the public dev
secret; production derives the secret from the signing key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Any

import jwt

from protocol import ids, limits

_PREFIX = re.compile(r"^signkey-\w+-")


class TokenIssuer:
    def __init__(self, secret: str = limits.DEV_JWT_SECRET, env: str = "dev", ttl: float = limits.SESSION_TOKEN_TTL):
        # HS256 wants a key of at least 32 bytes: sign with the SHA-256 of the secret.
        self._secret = hashlib.sha256(secret.encode()).digest()
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
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> bool:
        if not token:
            return False
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=limits.JWT_AUDIENCE,
                issuer=limits.JWT_ISSUER,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.PyJWTError:
            return False
        return bool(claims.get("env") == self.env)


def hash_signing_key(key: str) -> str:
    """The bearer form of a signing key: sha256 of the hex-decoded key part."""
    bare = _PREFIX.sub("", key)
    return hashlib.sha256(bytes.fromhex(bare)).hexdigest()


def bearer_matches(presented: str, signing_key: str) -> bool:
    """Accept the raw key or its hash, with or without a `signkey-…-` prefix."""
    token = _PREFIX.sub("", presented)
    bare = _PREFIX.sub("", signing_key)
    try:
        hashed = hash_signing_key(bare)
    except ValueError:
        hashed = ""
    return hmac.compare_digest(token, bare) or (bool(hashed) and hmac.compare_digest(token, hashed))
