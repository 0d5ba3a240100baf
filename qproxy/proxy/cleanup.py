"""Ledger of created upstream work, and the cleanup that cancels what is left of it.

The proxy appends every upstream job/session id to the ledger (fsync'ed) the moment upstream
creates it, so the Slurm epilog can cancel leftovers and account QPU time even if the proxy
crashed. ``cleanup_job`` needs no running proxy; the proxy's SIGTERM path runs the same
coroutine (``cleanup``) with its live upstream client.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from qproxy.config import Config
from qproxy.runtime_api import is_final, job_status

if TYPE_CHECKING:  # aiohttp is imported only when there is upstream work to clean up
    from qproxy.proxy.upstream.base import Upstream


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, kind: str, ident: str, **extra: Any) -> None:
        line = orjson.dumps({"kind": kind, "id": ident, "time": time.time(), **extra}) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def read_ledger(path: Path) -> tuple[list[str], list[str]]:
    """(job ids, session ids) in creation order; unreadable lines are skipped."""
    jobs: list[str] = []
    sessions: list[str] = []
    try:
        raw = path.read_bytes()
    except OSError:
        return jobs, sessions
    for line in raw.splitlines():
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        target = jobs if rec.get("kind") == "job" else sessions
        if rec.get("kind") in ("job", "session") and rec.get("id") not in target:
            target.append(str(rec["id"]))
    return jobs, sessions


def read_usage(path: Path) -> dict[str, float]:
    """Booked quantum seconds per upstream job (``usage`` lines; see proxy/usage.py)."""
    booked: dict[str, float] = {}
    try:
        raw = path.read_bytes()
    except OSError:
        return booked
    for line in raw.splitlines():
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        value = rec.get("quantum_seconds") if isinstance(rec, dict) else None
        if rec.get("kind") == "usage" and isinstance(value, int | float):
            booked[str(rec.get("id"))] = float(value)
    return booked


async def _one_job(client: Upstream, job_id: str,
                   booked: float | None = None) -> tuple[bool, float]:
    from qproxy.proxy.upstream.base import UpstreamError

    if booked is not None:  # final when booked: nothing to cancel, and the figure stands
        return False, booked
    cancelled = False
    try:
        code, doc, _ = await client.call("GET", f"/jobs/{job_id}")
        if code == 200 and not is_final(job_status(doc)):
            code, _, _ = await client.call("POST", f"/jobs/{job_id}/cancel")
            cancelled = code in (200, 202, 204)
        code, metrics, _ = await client.call("GET", f"/jobs/{job_id}/metrics")
    except UpstreamError:
        return cancelled, 0.0
    from qproxy.proxy.usage import quantum_seconds

    seconds = quantum_seconds(metrics) if code == 200 else None
    return cancelled, seconds or 0.0


async def cleanup(
    client: Upstream, jobs: Iterable[str], sessions: Iterable[str],
    booked: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Cancel active jobs, close sessions, sum quantum seconds (booked figures first)."""
    import asyncio

    from qproxy.proxy.upstream.base import UpstreamError

    jobs, sessions, booked = list(jobs), list(sessions), booked or {}
    results = await asyncio.gather(*(_one_job(client, j, booked.get(j)) for j in jobs))
    for sid in sessions:
        try:
            await client.call("DELETE", f"/sessions/{sid}/close")
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

    from qproxy.proxy.upstream import connect
    from qproxy.secrets import get_secret

    resource = config.resource(resource_name)
    upstream = config.upstream_for(resource)
    jobs, sessions = read_ledger(Path(ledger_path))
    booked = read_usage(Path(ledger_path))

    async def run() -> dict[str, Any]:
        client = connect(upstream, get_secret(config, upstream.api_key_secret))
        try:
            return await cleanup(client, jobs, sessions, booked)
        finally:
            await client.close()

    if not jobs and not sessions:
        return {"upstream_jobs": 0, "sessions": 0, "cancelled_at_shutdown": [],
                "quantum_seconds": 0.0}
    return asyncio.run(run())
