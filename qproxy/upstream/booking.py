"""Stop and book one upstream job: GET it, cancel it unless it is final, GET its metrics and
read the quantum seconds it used. The one home of that sequence: the proxy's ``UsageBook``
(qproxy/proxy/usage.py: booked when a job turns final, or before a DELETE) and the leftover
cleanup (``qproxy.upstream.leftovers``: proxy shutdown, or the epilog for a dead proxy) both
call it. Uses the seam's operations, never a vendor's module; once booked, the job is
``release``d (an on-prem system's lane is held until then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qproxy.runtime_api import is_final, job_status

if TYPE_CHECKING:  # aiohttp is imported only when there is upstream work
    from qproxy.upstream.base import Upstream


def quantum_seconds(metrics: Any) -> float | None:
    usage = metrics.get("usage") if isinstance(metrics, dict) else None
    value = usage.get("quantum_seconds") if isinstance(usage, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


async def stop_and_book(client: Upstream, job_id: str,
                        stop_first: bool = True) -> tuple[bool, float | None]:
    """(cancelled here, quantum seconds or None when upstream gave no figure). With
    ``stop_first`` an active job is cancelled first, so its figure stops growing; an
    upstream that cannot be reached ends the sequence where it stands."""
    from qproxy.upstream.base import UpstreamError

    cancelled = False
    try:
        if stop_first:
            job = await client.get_job(job_id, {})
            if job.status == 200 and not is_final(job_status(job.doc)):
                cancelled = (await client.cancel_job(job_id)).status in (200, 202, 204)
        metrics = await client.job_metrics(job_id)
    except UpstreamError:
        return cancelled, None
    return cancelled, quantum_seconds(metrics.doc) if metrics.status == 200 else None
