"""A recording pass-through between a client and a real server: every request's headers and
every response (status, headers, body bytes) as the client received them, so tests can assert
on what an unmodified client sends and scan everything it was answered. Not a double: it
forwards each request unchanged to the real server and each answer unchanged back."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

# Hop-by-hop and recomputed headers are not copied across.
_SKIP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})


def _lower(headers: Any) -> dict[str, str]:
    """Header names lower-cased (HTTP names are case-insensitive; reqwest sends lower case)."""
    return {k.lower(): v for k, v in headers.items()}


@dataclass
class Exchange:
    method: str
    path: str
    request_headers: dict[str, str]  # names lower-cased
    status: int
    response_headers: dict[str, str]  # names lower-cased
    body: bytes


@dataclass
class Tap:
    target: str  # e.g. http://127.0.0.1:PORT
    exchanges: list[Exchange] = field(default_factory=list)
    url: str = ""
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP}
        async with aiohttp.ClientSession(auto_decompress=False) as s, s.request(
            request.method, self.target + request.rel_url.raw_path_qs, headers=headers,
            data=body, allow_redirects=False,
        ) as r:
            data = await r.read()
            out_headers = {k: v for k, v in r.headers.items() if k.lower() not in _SKIP}
            self.exchanges.append(Exchange(
                request.method, request.path, _lower(request.headers), r.status,
                _lower(r.headers), data))
            return web.Response(status=r.status, body=data, headers=out_headers)

    def start(self) -> Tap:
        started = threading.Event()

        async def serve() -> None:
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = self._runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            started.set()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("tap did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)
