"""The worker's HTTP calls: `/v0/connect/start` and `/v0/connect/flush`."""

from __future__ import annotations

import logging

import httpx

from connect.gateway.auth import hash_signing_key
from protocol import connect_pb2 as pb

log = logging.getLogger("connect.worker")


class FatalStartError(Exception):
    """The server rejected our credentials; retrying cannot help."""


class StartClient:
    """Signs requests with the hashed signing key; after a 401 it switches to
    the fallback key (`CONNECT_SIGNING_KEY_FALLBACK`, else `INNGEST_SIGNING_KEY_FALLBACK`)
    once, for key rotation."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        api_base_url: str,
        signing_key: str | None,
        *,
        instance_id: str = "",
        fallback_key: str | None = None,
    ) -> None:
        self._http = http
        self._base = api_base_url.rstrip("/")
        self._headers = {"Content-Type": "application/protobuf"}
        if instance_id:
            self._headers["X-Connect-Instance-Id"] = instance_id
        self._keys = [k for k in (signing_key, fallback_key) if k]
        self._use_key(0)

    @property
    def start_url(self) -> str:
        """The URL `start` posts to (the client's api_url, or CONNECT_API_URL)."""
        return f"{self._base}/v0/connect/start"

    def _use_key(self, index: int) -> None:
        self._key_index = index
        if index < len(self._keys):
            self._headers["Authorization"] = f"Bearer {hash_signing_key(self._keys[index])}"

    async def start(self, exclude_gateways: list[str]) -> pb.StartResponse:
        body = pb.StartRequest(exclude_gateways=exclude_gateways).SerializeToString()
        resp = await self._http.post(f"{self._base}/v0/connect/start", content=body, headers=self._headers)
        if resp.status_code in (401, 403) and self._key_index + 1 < len(self._keys):
            log.warning("start refused with the signing key; trying the fallback key")
            self._use_key(self._key_index + 1)
            resp = await self._http.post(f"{self._base}/v0/connect/start", content=body, headers=self._headers)
        if resp.status_code in (401, 403):
            raise FatalStartError(
                f"{self.start_url} refused the signing key ({resp.status_code}: {resp.text.strip()[:200]}): "
                "give the key the platform was started with (the client's signing_key, or CONNECT_SIGNING_KEY, "
                "or INNGEST_SIGNING_KEY)"
            )
        if resp.status_code == 429:
            raise ConnectionError(f"start answered 429: {resp.text.strip()[:200]}")
        if resp.status_code != 200:
            raise ConnectionError(f"start answered {resp.status_code}: {resp.text.strip()[:200]}")
        out = pb.StartResponse()
        out.ParseFromString(resp.content)
        if not out.gateway_endpoint.startswith(("ws://", "wss://")):
            raise ConnectionError(f"start returned a bad gateway endpoint {out.gateway_endpoint!r}")
        return out

    async def flush(self, response: bytes) -> bool:
        """POST one serialized SDKResponse; True once the server stored it."""
        try:
            resp = await self._http.post(f"{self._base}/v0/connect/flush", content=response, headers=self._headers)
        except httpx.HTTPError as exc:
            log.warning("flush failed: %s", exc)
            return False
        if resp.status_code // 100 != 2:
            log.warning("flush answered %d: %s", resp.status_code, resp.text.strip()[:200])
            return False
        return True
