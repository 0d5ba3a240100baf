"""The upstream seam: the operations the proxy needs from a quantum computer's API, in the
terms of the API the job speaks (IBM's Qiskit Runtime API), whatever the vendor's wire
protocol. Each kind (one module, ``qproxy.upstream.KINDS``) translates: ``ibm-runtime`` maps
an operation to one Runtime call, ``ibm-quantum-system`` stores the params in S3, keeps
sessions and job records itself and rebuilds Runtime documents from its own.

Every answer is a ``Reply``: the HTTP status and body the job should see, Runtime-shaped
(a kind whose vendor answers otherwise translates, errors included), with the parsed JSON.
Results and logs are a ``Content``: a stream of chunks with no HTTP-library type in it, so
memory stays bounded whatever their size. ``UpstreamError`` is the one failure the routes
turn into a 502: the vendor could not be reached or refused our credentials.

tests/contract/ runs one suite against every kind's real server: a new vendor is one module,
one settings table (qproxy.config) and a passing contract run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol


class UpstreamError(RuntimeError):
    """The upstream could not be reached or refused our credentials."""


@dataclass(frozen=True)
class Reply:
    """What to answer the job: status, body (Runtime API shape) and the body parsed."""

    status: int
    doc: Any = None
    raw: bytes = b""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Content:
    """A streamed body (results, logs): ``chunks`` yields it as it arrives. ``length`` is
    None when unknown (or when the wire length would differ from the bytes yielded)."""

    status: int
    chunks: AsyncIterator[bytes]
    content_type: str | None = None
    length: int | None = None
    headers: dict[str, str] = field(default_factory=dict)  # e.g. Content-Disposition


@dataclass(frozen=True)
class Submission:
    """A job's submission, after the proxy's policies: the Runtime envelope's top-level
    fields with ``params`` kept as sent (a ``jsonx.Raw``), whether only the stdlib parser
    could read it, the client's IBM-API-Version (None: the kind's default) and when the Slurm
    job ends (epoch seconds: nothing of the submission may be needed past it)."""

    fields: dict[str, Any]
    stdlib_json: bool = False
    api_version: str | None = None
    deadline: float | None = None


@dataclass(frozen=True)
class DeviceStatus:
    """A device's availability as its vendor reports it, in the vendor's own words;
    ``locked``: reserved for others (an on-prem system's reservation)."""

    online: bool
    status: str  # e.g. "active", "paused", "offline"
    message: str = ""
    queue_length: int | None = None
    locked: bool = False


@dataclass(frozen=True)
class Capacity:
    """Execution lanes of a device, as its vendor splits them (None: not reported)."""

    hpc_lanes: int | None
    other_lanes: int | None = None


# (operation, seconds until the answer's head, or None when it failed): the metrics
Observer = Callable[[str, float | None], None]


def observed(observer: Observer | None, op: str, started: float | None) -> None:
    """Report one call of ``op`` that began at ``started`` (time.monotonic(); None: it
    failed) to ``observer``, if there is one."""
    if observer is not None:
        import time

        observer(op, None if started is None else time.monotonic() - started)


class Upstream(Protocol):
    base: str  # the API base URL, for messages and logs (never a credential)
    kind: str
    observe: Observer | None

    # --- backends ---
    async def list_backends(self, query: Mapping[str, str]) -> Reply:
        """``{"devices": [...]}`` as ``GET /backends`` answers."""
        ...

    async def backend_doc(self, name: str, what: str, query: Mapping[str, str]) -> Reply:
        """``what``: configuration, properties, status or defaults."""
        ...

    async def device_status(self, backend: str) -> DeviceStatus:
        """The device's availability (the device monitor, qproxy status); raises
        UpstreamError when it cannot be asked."""
        ...

    async def capacity(self, backend: str) -> Capacity:
        """The device's lanes as the vendor reports them (qproxy doctor)."""
        ...

    # --- jobs ---
    async def submit(self, sub: Submission) -> Reply:
        """Create the job; the Reply carries its ``id`` (2xx) or the refusal."""
        ...

    async def get_job(self, job_id: str, query: Mapping[str, str]) -> Reply:
        ...

    async def cancel_job(self, job_id: str) -> Reply:
        ...

    async def delete_job(self, job_id: str) -> Reply:
        ...

    async def job_tags(self, job_id: str, tags: list[str]) -> Reply:
        """Replace the job's tags (``tags``: the job's own plus the proxy's)."""
        ...

    async def job_metrics(self, job_id: str) -> Reply:
        """``timestamps`` and ``usage.quantum_seconds``: what booking reads."""
        ...

    def job_content(self, job_id: str, what: str, query: Mapping[str, str],
                    ) -> AbstractAsyncContextManager[Content]:
        """``what``: results, logs, transpiled_circuits or interim_results, streamed."""
        ...

    async def release(self, job_id: str) -> None:
        """The job is final and booked: free what the vendor holds for it (an on-prem
        system's lane); its results and logs stay readable."""
        ...

    async def purge(self, job_id: str) -> None:
        """The Slurm job is over: remove everything kept for this upstream job (stored
        objects, records). Never raises for what is already gone."""
        ...

    # --- sessions (a kind without them keeps them itself) ---
    async def create_session(self, body: dict[str, Any]) -> Reply:
        ...

    async def get_session(self, session_id: str) -> Reply:
        ...

    async def update_session(self, session_id: str, body: dict[str, Any]) -> Reply:
        ...

    async def close_session(self, session_id: str) -> Reply:
        ...

    # --- the instance ---
    async def instance_usage(self) -> Reply:
        ...

    async def token(self, force: bool = False) -> str:
        """The vendor access token (exchanged and refreshed by the client)."""
        ...

    async def close(self) -> None:
        ...
