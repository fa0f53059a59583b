"""Starts an official-SDK worker for `official_app` (the official SDK's own entry point)."""

import asyncio

import official_app
from inngest.connect import connect


async def main() -> None:
    await connect([(official_app.client, official_app.functions)], instance_id="official").start()


if __name__ == "__main__":
    asyncio.run(main())
