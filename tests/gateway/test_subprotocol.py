"""The gateway answers with `v0.connect.inngest.com` when a client offers it
(the official SDKs refuse a server that does not), and serves clients that
offer none or others."""

from __future__ import annotations

from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from protocol import connect_pb2 as pb
from protocol import frames, limits
from tests.gateway.stack import start_gateway


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        ([limits.SUBPROTOCOL], limits.SUBPROTOCOL),
        (["other", limits.SUBPROTOCOL], limits.SUBPROTOCOL),
        (None, None),
        (["other"], None),
    ],
)
async def test_subprotocol(tmp_path: Path, offered: list[str] | None, chosen: str | None) -> None:
    gw = await start_gateway(tmp_path / "gw.db")
    try:
        url = f"ws://127.0.0.1:{gw.gateway_port}{limits.CONNECT_PATH}"
        protocols = [Subprotocol(p) for p in offered] if offered is not None else None
        async with connect(url, subprotocols=protocols) as ws:
            assert ws.subprotocol == chosen
            kind, _ = frames.decode(await ws.recv())  # type: ignore[arg-type]
            assert kind == pb.GATEWAY_HELLO
    finally:
        await gw.close()
