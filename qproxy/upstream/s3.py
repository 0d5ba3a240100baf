"""The centre's S3 bucket, as the ``ibm-quantum-system`` kind uses it: SigV4 presigned URLs
(the only way the quantum system reaches the bucket) and the proxy's own object transfers,
made through short-lived presigned URLs too, so one signing path serves both.

botocore signs (``S3SigV4QueryAuth`` on a bare request: no client, no service model, ~36 ms
to import once); aiohttp moves the bytes, streamed both ways, so a 100 MB result never sits
in the proxy's memory. Plain-http endpoints go only to root's listeners (guard.py), as for
the API itself. The secret key never leaves this process: a presigned URL carries the access
key id and a signature for one object, one method and a bounded time, which is why no URL
is ever logged, audited or shown to the job.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from qproxy.upstream.base import Observer, UpstreamError, observed
from qproxy.upstream.guard import UntrustedListener, credential_session

# SigV4's limit for a presigned URL (AWS: 7 days)
MAX_EXPIRY = 7 * 24 * 3600
# the proxy's own transfers start within seconds of signing
OWN_EXPIRY = 300
CHUNK = 64 * 1024


class ObjectStore:
    """One bucket of an S3-compatible endpoint (path-style addressing: works with every
    S3-compatible server, needs no DNS per bucket)."""

    def __init__(self, endpoint: str, bucket: str, region: str, access_key_id: str,
                 secret_access_key: str, verify_tls: bool = True) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        self.region = region
        self._access = access_key_id
        self._secret = secret_access_key
        self._verify = verify_tls
        self._session: aiohttp.ClientSession | None = None
        self.observe: Observer | None = None

    def __repr__(self) -> str:  # never the keys
        return f"ObjectStore({self.endpoint!r}, {self.bucket!r})"

    def presign(self, method: str, key: str, expires: int) -> str:
        """A presigned URL for ``method`` (GET, PUT, DELETE, HEAD) on ``key``, valid
        ``expires`` seconds (1 s to 7 days)."""
        from botocore.auth import S3SigV4QueryAuth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        expires = max(1, min(int(expires), MAX_EXPIRY))
        url = f"{self.endpoint}/{quote(self.bucket)}/{quote(key, safe='')}"
        request = AWSRequest(method=method, url=url)
        S3SigV4QueryAuth(Credentials(self._access, self._secret), "s3", self.region,
                         expires=expires).add_auth(request)
        return str(request.url)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = credential_session(self._verify, 16, 300)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @asynccontextmanager
    async def _request(self, op: str, method: str, key: str, data: Any = None,
                       ) -> AsyncIterator[aiohttp.ClientResponse]:
        url = URL(self.presign(method, key, OWN_EXPIRY), encoded=True)
        started = time.monotonic()
        head = False
        try:
            async with self.session.request(method, url, data=data,
                                            allow_redirects=False) as resp:
                head = True
                observed(self.observe, op, started)
                yield resp
        except (UntrustedListener, aiohttp.ClientError, TimeoutError) as exc:
            if not head:
                observed(self.observe, op, None)
            # the type only: the exception's text may quote the presigned URL
            raise UpstreamError(f"the S3 store is unreachable: {type(exc).__name__}") from None

    async def put(self, key: str, data: bytes | memoryview) -> None:
        async with self._request("s3_put", "PUT", key, data) as resp:
            await resp.read()
            if resp.status not in (200, 201, 204):
                raise UpstreamError(f"the S3 store refused to store an object: HTTP "
                                    f"{resp.status}")

    @asynccontextmanager
    async def get(self, key: str) -> AsyncIterator[tuple[int, int | None,
                                                           AsyncIterator[bytes]]]:
        """(HTTP status, length or None, the body's chunks) of ``key``."""
        async with self._request("s3_get", "GET", key) as resp:
            length = resp.content_length if "Content-Encoding" not in resp.headers else None
            yield resp.status, length, resp.content.iter_chunked(CHUNK)

    async def read(self, key: str, limit: int) -> bytes | None:
        """The whole object (at most ``limit`` bytes), or None when it does not exist."""
        async with self.get(key) as (status, _, chunks):
            if status == 404:
                return None
            if status != 200:
                raise UpstreamError(f"the S3 store refused to read an object: HTTP {status}")
            buf = bytearray()
            async for chunk in chunks:
                buf += chunk
                if len(buf) > limit:
                    raise UpstreamError(f"an object in the S3 store is larger than {limit} "
                                        "bytes")
            return bytes(buf)

    async def delete(self, key: str) -> None:
        """Delete ``key`` (S3 answers 204 whether or not it existed)."""
        async with self._request("s3_delete", "DELETE", key) as resp:
            await resp.read()
            if resp.status not in (200, 204, 404):
                raise UpstreamError(f"the S3 store refused to delete an object: HTTP "
                                    f"{resp.status}")
