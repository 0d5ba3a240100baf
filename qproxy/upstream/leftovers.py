"""The cleanup that cancels what is left of a job's upstream work (see ``qproxy.node.ledger``).

``cleanup_job`` needs no running proxy (the epilog, for a proxy that died); the proxy's
SIGTERM path runs the same coroutine (``cleanup``) with its live upstream client.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qproxy.config import Config
from qproxy.node.ledger import read_ledger, read_usage
from qproxy.upstream.booking import stop_and_book

if TYPE_CHECKING:  # aiohttp is imported only when there is upstream work to clean up
    from qproxy.upstream.base import Upstream


async def _one_job(client: Upstream, job_id: str,
                   booked: float | None = None) -> tuple[bool, float]:
    """Stop and book it (a booked job is final: nothing to cancel, and the figure stands),
    then purge what the vendor keeps of it (an on-prem system's lane and stored objects)."""
    from qproxy.upstream.base import UpstreamError

    if booked is not None:
        cancelled, seconds = False, booked
    else:
        cancelled, found = await stop_and_book(client, job_id)
        seconds = found or 0.0
    try:
        await client.purge(job_id)
    except UpstreamError:
        pass
    return cancelled, seconds


async def cleanup(
    client: Upstream, jobs: Iterable[str], sessions: Iterable[str],
    booked: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Cancel active jobs, close sessions, sum quantum seconds (booked figures first)."""
    import asyncio

    from qproxy.upstream.base import UpstreamError

    jobs, sessions, booked = list(jobs), list(sessions), booked or {}
    results = await asyncio.gather(*(_one_job(client, j, booked.get(j)) for j in jobs))
    for sid in sessions:
        try:
            await client.close_session(sid)
        except UpstreamError:
            pass
    return {
        "upstream_jobs": len(jobs),
        "sessions": len(sessions),
        "cancelled_at_shutdown": [j for j, (c, _) in zip(jobs, results, strict=True) if c],
        "quantum_seconds": round(sum(s for _, s in results), 3),
    }


def cleanup_job(config: Config, resource_name: str, ledger_path: str | Path) -> dict[str, Any]:
    """Standalone epilog cleanup from a ledger file (no proxy needed)."""
    import asyncio

    from qproxy.upstream import open_upstream

    resource = config.resource(resource_name)
    jobs, sessions = read_ledger(Path(ledger_path))
    booked = read_usage(Path(ledger_path))

    async def run() -> dict[str, Any]:
        client = open_upstream(config, resource)
        try:
            return await cleanup(client, jobs, sessions, booked)
        finally:
            await client.close()

    if not jobs and not sessions:
        return {"upstream_jobs": 0, "sessions": 0, "cancelled_at_shutdown": [],
                "quantum_seconds": 0.0}
    return asyncio.run(run())
