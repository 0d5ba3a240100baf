"""What the proxy needs from an upstream vendor, whatever its wire protocol: a small call
whose answer it inspects, a streamed request it relays, the vendor token (refreshed by the
client itself; the vendor key never leaves it) and closing. ``UpstreamError`` is the one
failure the routes turn into a 502."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp


class UpstreamError(RuntimeError):
    """The upstream could not be reached or refused our credentials."""


@dataclass(frozen=True)
class DeviceStatus:
    """A device's availability as its vendor reports it, in the vendor's own words."""

    online: bool
    status: str  # e.g. "active", "paused", "offline"
    message: str = ""
    queue_length: int | None = None


class Upstream(Protocol):
    base: str  # the API base URL, for messages and logs (never the credential)

    async def call(self, method: str, path: str, *, params: Any = None, body: Any = None,
                   headers: Mapping[str, str] | None = None,
                   stdlib_json: bool = False) -> tuple[int, Any, bytes]:
        """(status, parsed JSON or None, raw body)."""
        ...

    def stream(self, method: str, path: str, *, params: Any = None, data: Any = None,
               headers: Mapping[str, str] | None = None,
               ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """The response, unread, for relaying as it arrives."""
        ...

    async def token(self, force: bool = False) -> str:
        """The vendor access token (exchanged and refreshed by the client)."""
        ...

    async def device_status(self, backend: str) -> DeviceStatus:
        """The device's availability (the device monitor, qproxy/slurm/monitor.py); raises
        UpstreamError when it cannot be asked."""
        ...

    async def close(self) -> None:
        ...
