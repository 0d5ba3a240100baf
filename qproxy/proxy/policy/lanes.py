"""Lanes policy: at most N of this Slurm job's upstream jobs are Queued or Running at once.

N is the job's lane count (GRES / licence count); Slurm enforces it between jobs, the proxy
enforces it inside one job (the job's environment proves nothing). An extra submission either
waits in the proxy for a lane (``lanes_mode = "wait"``, the default, bounded by
``lanes_wait_seconds`` then 429) or is refused at once with 429 (``"refuse"``).

Why "wait" by default: the unmodified client does not retry a 429 on job submission, so
refusing turns a script that submits N+1 jobs into a crash, while waiting turns it into
back-pressure (the client posts jobs with a 900 s read timeout, longer than the default
600 s bound). "refuse" suits centres whose users run their own retry loops.
"""

from __future__ import annotations

import asyncio
import time

from qproxy.proxy.policy.errors import PolicyError


class LaneGate:
    def __init__(self, lanes: int, mode: str = "wait", wait_seconds: float = 600.0) -> None:
        if lanes < 1:
            raise ValueError("lanes must be >= 1")
        self.lanes = lanes
        self.mode = mode
        self.wait_seconds = wait_seconds
        self.active: set[str] = set()
        self.reserved = 0
        self._cond = asyncio.Condition()

    @property
    def in_use(self) -> int:
        return len(self.active) + self.reserved

    async def reserve(self) -> float:
        """Take a lane for a submission about to be made; return seconds waited."""
        start = time.monotonic()
        async with self._cond:
            if self.in_use >= self.lanes:
                if self.mode != "wait":
                    raise PolicyError(429, self._busy("retry when one of them finishes"))
                try:
                    await asyncio.wait_for(
                        self._cond.wait_for(lambda: self.in_use < self.lanes),
                        self.wait_seconds,
                    )
                except TimeoutError:
                    raise PolicyError(
                        429, self._busy(f"waited {self.wait_seconds:g} s for a free lane")
                    ) from None
            self.reserved += 1
        return time.monotonic() - start

    def _busy(self, tail: str) -> str:
        return (
            f"all {self.lanes} QPU lane(s) of this Slurm job are busy "
            f"({len(self.active)} job(s) queued or running); {tail}"
        )

    async def commit(self, job_id: str) -> None:
        """The reserved submission created upstream job ``job_id``."""
        async with self._cond:
            self.reserved -= 1
            self.active.add(job_id)

    async def cancel_reservation(self) -> None:
        async with self._cond:
            self.reserved -= 1
            self._cond.notify_all()

    async def finished(self, job_id: str) -> None:
        async with self._cond:
            if job_id in self.active:
                self.active.discard(job_id)
                self._cond.notify_all()
