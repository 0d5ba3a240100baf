"""Upstream client for an IBM-Qiskit-Runtime-compatible service (IBM Quantum Platform or the
local emulator).

One aiohttp ClientSession (keep-alive) per proxy. The proxy does the IAM API-key exchange
itself and refreshes the access token a minute before it expires, so the admin's API key
never leaves this process; every request carries ``Authorization: Bearer``, ``Service-CRN``
and ``IBM-API-Version``. Redirects are never followed (a 3xx would carry the credential to
wherever it points), and plain-http connections go only to root's listeners (guard.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from qproxy.config import UpstreamSettings
from qproxy.upstream import jsonx
from qproxy.upstream.base import DeviceStatus, Upstream, UpstreamError
from qproxy.upstream.guard import OwnerCheckedConnector, UntrustedListener

__all__ = ["IBMRuntimeUpstream", "UpstreamError"]

REFRESH_MARGIN = 60.0
# `GET /backends/{name}/status` words that mean "takes no work now" even where `state` is
# missing (IBM: "active" when online; "paused"/"maintenance"/"internal" otherwise)
DOWN_STATUSES = frozenset({"paused", "offline", "maintenance", "internal", "unavailable"})


class IBMRuntimeUpstream:
    """The ``ibm-runtime`` kind: IBM Quantum Platform's Qiskit Runtime REST API."""

    def __init__(self, upstream: UpstreamSettings, api_key: str, timeout: float = 300.0) -> None:
        self.upstream = upstream
        self.base = upstream.url.rstrip("/")
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"IBMRuntimeUpstream({self.base!r})"

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            ssl = True if self.upstream.verify_tls else False
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=OwnerCheckedConnector(ssl=ssl, limit=32),
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def token(self, force: bool = False) -> str:
        async with self._lock:
            if force or self._token is None or time.time() > self._expires - REFRESH_MARGIN:
                await self._exchange()
            assert self._token is not None
            return self._token

    async def _exchange(self) -> None:
        url = self.upstream.iam_url.rstrip("/") + "/identity/token"
        form = {"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": self._api_key}
        try:
            async with self.session.post(
                url, data=form, headers={"Accept": "application/json"}, allow_redirects=False
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise UpstreamError(f"upstream IAM refused the credential: HTTP {resp.status}")
                doc = orjson.loads(body)
        except UntrustedListener as exc:
            raise UpstreamError(str(exc)) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"upstream IAM unreachable: {type(exc).__name__}") from None
        except orjson.JSONDecodeError:
            raise UpstreamError("upstream IAM answered with invalid JSON") from None
        self._token = str(doc["access_token"])
        now = time.time()
        if "expiration" in doc:
            self._expires = float(doc["expiration"])
        else:
            self._expires = now + float(doc.get("expires_in", 3600))
        # Refresh at 80% of the lifetime at the latest (short-lived tokens).
        life = self._expires - now
        self._expires = now + min(life, max(life * 0.8 + REFRESH_MARGIN, 1.0))

    async def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        h = {
            "Authorization": f"Bearer {await self.token()}",
            "Service-CRN": self.upstream.instance,
            "IBM-API-Version": self.upstream.api_version,
            "Accept": "application/json",
        }
        if extra:
            h.update(extra)
        return h

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a request and yield the response unread (for streaming pass-through)."""
        try:
            async with self.session.request(
                method,
                self.base + path,
                params=params,
                data=data,
                headers=await self.headers(headers),
                allow_redirects=False,
            ) as resp:
                yield resp
        except UntrustedListener as exc:
            raise UpstreamError(str(exc)) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"upstream unreachable: {type(exc).__name__}") from None

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        stdlib_json: bool = False,
    ) -> tuple[int, Any, bytes]:
        """A small request whose answer the proxy needs: (status, parsed JSON or None, raw)."""
        data = None
        extra = dict(headers or {})
        if body is not None:
            data = jsonx.dumps(body, stdlib_json)
            extra["Content-Type"] = "application/json"
        for attempt in (0, 1):
            async with self.stream(method, path, params=params, data=data, headers=extra) as r:
                raw = await r.read()
                status = r.status
            if status == 401 and attempt == 0:
                await self.token(force=True)
                continue
            break
        try:
            doc = jsonx.loads(raw).value if raw else None
        except (ValueError, UnicodeDecodeError):
            doc = None
        return status, doc, raw

    async def device_status(self, backend: str) -> DeviceStatus:
        """``GET /backends/{name}/status``: ``{"state": bool, "status", "message",
        "length_queue"}`` (what qiskit-ibm-runtime maps to BackendStatus)."""
        code, doc, _ = await self.call("GET", f"/backends/{backend}/status")
        if code != 200 or not isinstance(doc, dict):
            raise UpstreamError(f"status of {backend}: HTTP {code}")
        status = str(doc.get("status") or "")[:40]
        online = doc.get("state") is not False and status.lower() not in DOWN_STATUSES
        queue = doc.get("length_queue")
        return DeviceStatus(online, status or ("active" if online else "unknown"),
                            str(doc.get("message") or "")[:200],
                            queue if isinstance(queue, int) else None)


if TYPE_CHECKING:  # mypy: this class is an Upstream (base.py)
    _IS_AN_UPSTREAM: type[Upstream] = IBMRuntimeUpstream
