"""The ``ibm-runtime`` kind: IBM Quantum Platform's Qiskit Runtime REST API (or the local
emulator). The job speaks this API too, so each operation is one call of the same name and
its answer is passed on as it came: status and body byte for byte, the params of a
submission spliced in as the client sent them (qproxy.proxy.envelope).

Every request carries ``Authorization: Bearer`` (IAM, transport.py), ``Service-CRN`` and
``IBM-API-Version`` (the client's own when it sent one).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from qproxy.config import RuntimeUpstreamSettings, UpstreamSettings
from qproxy.upstream.base import (
    Capacity,
    Content,
    DeviceStatus,
    Observer,
    Reply,
    Submission,
    Upstream,
    UpstreamError,
)
from qproxy.upstream.transport import Transport

__all__ = ["IBMRuntimeUpstream", "UpstreamError"]

CHUNK = 64 * 1024
# `GET /backends/{name}/status` words that mean "takes no work now" even where `state` is
# missing (IBM: "active" when online; "paused"/"maintenance"/"internal" otherwise)
DOWN_STATUSES = frozenset({"paused", "offline", "maintenance", "internal", "unavailable"})
DISPOSITION = "Content-Disposition"  # passed on with the body (a download's name)


class IBMRuntimeUpstream:
    """Runtime API operations over one Transport."""

    kind = "ibm-runtime"

    def __init__(self, upstream: UpstreamSettings, credentials: Mapping[str, str],
                 timeout: float = 300.0) -> None:
        self.upstream = upstream
        self.api_version = (upstream.api_version
                            if isinstance(upstream, RuntimeUpstreamSettings) else
                            RuntimeUpstreamSettings.api_version)
        self.http = Transport(upstream.url, upstream.iam_url,
                              credentials[upstream.api_key_secret], upstream.verify_tls,
                              {"Service-CRN": upstream.instance,
                               "IBM-API-Version": self.api_version}, timeout)
        self.base = self.http.base

    def __repr__(self) -> str:  # never show the key
        return f"IBMRuntimeUpstream({self.base!r})"

    @property
    def observe(self) -> Observer | None:
        return self.http.observe

    @observe.setter
    def observe(self, value: Observer | None) -> None:
        self.http.observe = value

    async def _reply(self, op: str, method: str, path: str, *, params: Any = None,
                     body: Any = None, stdlib_json: bool = False,
                     api_version: str | None = None) -> Reply:
        headers = {"IBM-API-Version": api_version} if api_version else None
        status, doc, raw = await self.http.call(op, method, path, params=params, body=body,
                                                headers=headers, stdlib_json=stdlib_json)
        return Reply(status, doc, raw)

    # --- backends -------------------------------------------------------------------------

    async def list_backends(self, query: Mapping[str, str]) -> Reply:
        return await self._reply("backends", "GET", "/backends", params=dict(query))

    async def backend_doc(self, name: str, what: str, query: Mapping[str, str]) -> Reply:
        return await self._reply(f"backend_{what}", "GET", f"/backends/{name}/{what}",
                                 params=dict(query))

    async def device_status(self, backend: str) -> DeviceStatus:
        """``GET /backends/{name}/status``: ``{"state": bool, "status", "message",
        "length_queue"}`` (what qiskit-ibm-runtime maps to BackendStatus)."""
        r = await self._reply("backend_status", "GET", f"/backends/{backend}/status")
        doc = r.doc
        if r.status != 200 or not isinstance(doc, dict):
            raise UpstreamError(f"status of {backend}: HTTP {r.status}")
        status = str(doc.get("status") or "")[:40]
        online = doc.get("state") is not False and status.lower() not in DOWN_STATUSES
        queue = doc.get("length_queue")
        return DeviceStatus(online, status or ("active" if online else "unknown"),
                            str(doc.get("message") or "")[:200],
                            queue if isinstance(queue, int) else None)

    async def capacity(self, backend: str) -> Capacity:
        return Capacity(None)  # the cloud API reports no lanes

    # --- jobs -----------------------------------------------------------------------------

    async def submit(self, sub: Submission) -> Reply:
        return await self._reply("submit", "POST", "/jobs", body=sub.fields,
                                 stdlib_json=sub.stdlib_json, api_version=sub.api_version)

    async def get_job(self, job_id: str, query: Mapping[str, str]) -> Reply:
        return await self._reply("get_job", "GET", f"/jobs/{job_id}", params=dict(query))

    async def cancel_job(self, job_id: str) -> Reply:
        return await self._reply("cancel_job", "POST", f"/jobs/{job_id}/cancel")

    async def delete_job(self, job_id: str) -> Reply:
        return await self._reply("delete_job", "DELETE", f"/jobs/{job_id}")

    async def job_tags(self, job_id: str, tags: list[str]) -> Reply:
        return await self._reply("job_tags", "PUT", f"/jobs/{job_id}/tags",
                                 body={"tags": tags})

    async def job_metrics(self, job_id: str) -> Reply:
        return await self._reply("job_metrics", "GET", f"/jobs/{job_id}/metrics")

    @asynccontextmanager
    async def job_content(self, job_id: str, what: str, query: Mapping[str, str],
                          ) -> AsyncIterator[Content]:
        async with self.http.stream(f"job_{what}", "GET", f"/jobs/{job_id}/{what}",
                                    params=dict(query)) as resp:
            # aiohttp inflates a compressed body: its wire length would be wrong
            length = resp.content_length if "Content-Encoding" not in resp.headers else None
            yield Content(
                resp.status, resp.content.iter_chunked(CHUNK),
                content_type=resp.headers.get("Content-Type"), length=length,
                headers={DISPOSITION: resp.headers[DISPOSITION]} if DISPOSITION in resp.headers
                else {})

    async def release(self, job_id: str) -> None:
        return None  # a final cloud job holds nothing

    async def purge(self, job_id: str) -> None:
        return None  # the job's records stay in the centre's IBM Cloud instance

    # --- sessions -------------------------------------------------------------------------

    async def create_session(self, body: dict[str, Any]) -> Reply:
        return await self._reply("create_session", "POST", "/sessions", body=body)

    async def get_session(self, session_id: str) -> Reply:
        return await self._reply("get_session", "GET", f"/sessions/{session_id}")

    async def update_session(self, session_id: str, body: dict[str, Any]) -> Reply:
        return await self._reply("update_session", "PATCH", f"/sessions/{session_id}",
                                 body=body)

    async def close_session(self, session_id: str) -> Reply:
        return await self._reply("close_session", "DELETE", f"/sessions/{session_id}/close")

    # --- the instance ---------------------------------------------------------------------

    async def instance_usage(self) -> Reply:
        return await self._reply("instance_usage", "GET", "/instances/usage")

    async def token(self, force: bool = False) -> str:
        return await self.http.token(force)

    async def close(self) -> None:
        await self.http.close()


if TYPE_CHECKING:  # mypy: this class is an Upstream (base.py)
    _IS_AN_UPSTREAM: type[Upstream] = IBMRuntimeUpstream
