"""The proxy's status file for operators (``qproxy status``): ``status.json`` in the job's
root-only state dir, rewritten whenever what it shows changes.

Why a file and not an endpoint: the job-facing port is reachable by every user of the node,
so an admin endpoint there would need its own secret and guard; the state dir is already
root-only (0700), so no job user can read another job's figures, and ``qproxy status`` reads
it without talking to (or waiting on) a busy proxy.

Why a short poll of the proxy's own memory rather than a hook in every route: lanes and job
states change in several places (submission, cancel, the upstream poller, shutdown); comparing
a small snapshot a few times a second costs microseconds and cannot miss one of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from qproxy.files import atomic_write
from qproxy.records import ProxyStatus

if TYPE_CHECKING:
    from qproxy.proxy.context import JobContext

log = logging.getLogger("qproxy.proxy.status")
INTERVAL = 0.25  # seconds between two looks; an operator sees a change at most this late


def snapshot(ctx: JobContext, pid: int, port: int) -> ProxyStatus:
    """What the proxy holds now (``updated`` left at 0: compared without it)."""
    return ProxyStatus(
        job_id=ctx.job_id, pid=pid, port=port, lanes=ctx.lanes.lanes,
        lanes_in_use=ctx.lanes.in_use, end_time=ctx.timelimit.end_time,
        jobs=dict(ctx.owned.jobs), requests=int(ctx.stats.get("requests", 0)))


def write(path: Path, status: ProxyStatus) -> None:
    atomic_write(path, replace(status, updated=time.time()).to_json(), fsync=False)


async def keep_written(ctx: JobContext, path: Path, pid: int, port: int,
                       interval: float = INTERVAL) -> None:
    """Write the file at start and again on every change, until cancelled."""
    last: ProxyStatus | None = None
    while True:
        now = snapshot(ctx, pid, port)
        if now != last:
            try:
                write(path, now)
                last = now
            except OSError as exc:  # the job dir went away (epilog): nothing to report to
                log.warning("status file %s: %s", path, exc)
        await asyncio.sleep(interval)
