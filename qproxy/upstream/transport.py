"""The HTTP side every IBM kind shares: one keep-alive aiohttp session per proxy, the IAM
API-key exchange (refreshed a minute before the token expires, so the admin's key never
leaves this process), each call timed for the metrics, and one retry after a 401 with a
fresh token.

Redirects are never followed (a 3xx would carry the credential to wherever it points), and
plain-http connections go only to root's listeners (guard.py). A failure to connect is an
``UpstreamError`` naming the exception's type only: its text may quote a URL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from qproxy.upstream import jsonx
from qproxy.upstream.base import Observer, UpstreamError, observed
from qproxy.upstream.guard import UntrustedListener, credential_session

REFRESH_MARGIN = 60.0
GRANT = "urn:ibm:params:oauth:grant-type:apikey"


class Transport:
    """Calls to one API base with ``Authorization: Bearer`` from IAM and fixed headers."""

    def __init__(self, base: str, iam_url: str, api_key: str, verify_tls: bool,
                 headers: Mapping[str, str], timeout: float = 300.0) -> None:
        self.base = base.rstrip("/")
        self.iam_url = iam_url.rstrip("/")
        self._api_key = api_key
        self._verify = verify_tls
        self._fixed = dict(headers)
        self._sock_read = timeout
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self.observe: Observer | None = None

    def __repr__(self) -> str:  # never show the key
        return f"Transport({self.base!r})"

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = credential_session(
                self._verify, 32, self._sock_read,
                json_serialize=lambda o: orjson.dumps(o).decode())
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def timed(self, op: str, started: float | None) -> None:
        observed(self.observe, op, started)

    # --- IAM ------------------------------------------------------------------------------

    async def token(self, force: bool = False) -> str:
        async with self._lock:
            if force or self._token is None or time.time() > self._expires - REFRESH_MARGIN:
                await self._exchange()
            assert self._token is not None
            return self._token

    async def _exchange(self) -> None:
        url = self.iam_url + "/identity/token"
        form = {"grant_type": GRANT, "apikey": self._api_key}
        started = time.monotonic()
        try:
            async with self.session.post(
                url, data=form, headers={"Accept": "application/json"}, allow_redirects=False
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise UpstreamError(f"upstream IAM refused the credential: HTTP {resp.status}")
                doc = orjson.loads(body)
        except UntrustedListener as exc:
            self.timed("iam", None)
            raise UpstreamError(str(exc)) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.timed("iam", None)
            raise UpstreamError(f"upstream IAM unreachable: {type(exc).__name__}") from None
        except orjson.JSONDecodeError:
            raise UpstreamError("upstream IAM answered with invalid JSON") from None
        self.timed("iam", started)
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
        h = {"Authorization": f"Bearer {await self.token()}", "Accept": "application/json",
             **self._fixed}
        if extra:
            h.update(extra)
        return h

    # --- calls ----------------------------------------------------------------------------

    @asynccontextmanager
    async def stream(self, op: str, method: str, path: str, *, params: Any = None,
                     data: Any = None, headers: Mapping[str, str] | None = None,
                     ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response, unread (for streaming it on), timed until its head as ``op``."""
        started = time.monotonic()
        head = False
        try:
            async with self.session.request(
                method, self.base + path, params=params, data=data,
                headers=await self.headers(headers), allow_redirects=False,
            ) as resp:
                head = True
                self.timed(op, started)
                yield resp
        except UntrustedListener as exc:
            if not head:
                self.timed(op, None)
            raise UpstreamError(str(exc)) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            if not head:
                self.timed(op, None)
            raise UpstreamError(f"upstream unreachable: {type(exc).__name__}") from None

    async def call(self, op: str, method: str, path: str, *, params: Any = None,
                   body: Any = None, headers: Mapping[str, str] | None = None,
                   stdlib_json: bool = False) -> tuple[int, Any, bytes]:
        """A small request whose answer the proxy needs: (status, parsed JSON or None, raw)."""
        data = None
        extra = dict(headers or {})
        if body is not None:
            data = jsonx.dumps(body, stdlib_json)
            extra["Content-Type"] = "application/json"
        for attempt in (0, 1):
            async with self.stream(op, method, path, params=params, data=data,
                                   headers=extra) as r:
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
