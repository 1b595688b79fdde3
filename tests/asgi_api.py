"""Requests to a FastAPI app in process, through httpx's ASGI transport (no server, no port)."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

PROBLEM = "application/problem+json"


class Api:
    """Requests to ``app`` in process, each on an event loop of its own."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def request(self, method: str, path: str) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                return await client.request(method, path)

        return asyncio.run(call())

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)
