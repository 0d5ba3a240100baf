"""Booked usage: each upstream job's quantum seconds, written to the ledger once it is final.

Usage used to be summed from each job's metrics only at the end; a job could ``DELETE`` its
own finished upstream job first, the epilog's lookup then got 404 and booked 0 s. Now the
figure is read when a job turns final (seen by the status poller or the job's own status
requests) and, at the latest, before a ``DELETE`` is forwarded (an active job is cancelled
first, so its figure stops growing), and appended to the ledger (``{"kind": "usage", "id",
"quantum_seconds"}``, fsync'ed). ``cleanup`` (proxy shutdown or the epilog for a dead proxy)
uses the booked figure for such a job, so no action of the job's lowers it. The GET / cancel /
metrics sequence itself is ``qproxy.upstream.booking.stop_and_book``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from qproxy.runtime_api import is_final, job_status
from qproxy.upstream.base import UpstreamError
from qproxy.upstream.booking import stop_and_book

if TYPE_CHECKING:
    from qproxy.node.ledger import Ledger
    from qproxy.upstream.base import Upstream


# how long a cancelled job may take to show final upstream before it is booked anyway
SETTLE_SECONDS = 60.0


class UsageBook:
    def __init__(self, client: Upstream, ledger: Ledger, booked: dict[str, float]) -> None:
        self.client = client
        self.ledger = ledger
        self.booked = dict(booked)
        self._pending: dict[str, asyncio.Task[float | None]] = {}
        self.on_booked: Callable[[float], None] | None = None  # the metrics' QPU seconds

    def final_seen(self, job_id: str) -> None:
        """A job turned final: book it in the background (once)."""
        if job_id not in self.booked and job_id not in self._pending:
            self._pending[job_id] = asyncio.ensure_future(self._book(job_id))

    def cancelled(self, job_id: str, every: float) -> None:
        """A cancel was accepted: book the job once upstream shows it final (a cancel takes
        effect asynchronously), polling every ``every`` s for at most SETTLE_SECONDS, so what
        the vendor holds for it (an on-prem system's lane) is released soon after."""
        if job_id not in self.booked and job_id not in self._pending:
            self._pending[job_id] = asyncio.ensure_future(self._settle(job_id, every))

    async def _settle(self, job_id: str, every: float) -> float | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_SECONDS
        try:
            while loop.time() < deadline:
                r = await self.client.get_job(job_id, {"exclude_params": "true"})
                if r.status != 200 or is_final(job_status(r.doc)):
                    break
                await asyncio.sleep(every)
        except UpstreamError:
            pass
        return await self._book(job_id)

    async def ensure(self, job_id: str) -> float | None:
        """The booked figure, booking it now if need be (before a DELETE is forwarded)."""
        if job_id in self.booked:
            return self.booked[job_id]
        task = self._pending.get(job_id)
        if task is None:
            task = self._pending[job_id] = asyncio.ensure_future(self._book(job_id, True))
        return await asyncio.shield(task)

    async def _book(self, job_id: str, stop_first: bool = False) -> float | None:
        try:
            _, seconds = await stop_and_book(self.client, job_id, stop_first)
        finally:
            self._pending.pop(job_id, None)
        if seconds is None:
            return None
        self.booked[job_id] = seconds
        self.ledger.append("usage", job_id, quantum_seconds=seconds)
        if self.on_booked is not None:
            self.on_booked(seconds)
        # booked (fsync'ed) first: what the vendor kept to report the figure may now go
        try:
            await self.client.release(job_id)
        except UpstreamError:
            pass  # purged by the epilog at the latest
        return seconds

    async def drain(self) -> None:
        """Let bookings in flight finish (shutdown)."""
        if self._pending:
            await asyncio.gather(*list(self._pending.values()), return_exceptions=True)
