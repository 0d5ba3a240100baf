"""Time-limit policy: nothing may outlive the Slurm job's end time.

New jobs and sessions are refused once the end time has passed, and every job's ``cost``
(its maximum execution time, seconds) and every session's ``max_ttl`` are clamped to the time
left, so upstream stops the work even if the proxy dies before it can cancel it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from qproxy.proxy.policy.errors import PolicyError


class TimeLimit:
    def __init__(self, end_time: float, clock: Callable[[], float] = time.time) -> None:
        self.end_time = end_time
        self.clock = clock

    def remaining(self) -> int:
        return max(0, math.floor(self.end_time - self.clock()))

    def check_new_work(self, what: str = "job") -> int:
        """Seconds left; PolicyError 403 once the Slurm job's time is up."""
        left = self.remaining()
        if left <= 0:
            raise PolicyError(
                403, f"the Slurm job's time limit has passed: no new {what} may be started"
            )
        return left

    @staticmethod
    def _clamp(requested: Any, left: int) -> int:
        if isinstance(requested, bool) or not isinstance(requested, int | float):
            return left
        if requested <= 0:
            return left
        return int(min(requested, left))

    def rewrite_job(self, body: dict[str, Any]) -> dict[str, Any]:
        """Clamp ``cost`` (and ``session_time`` when the job starts a session)."""
        left = self.check_new_work("job")
        before = body.get("cost")
        body["cost"] = self._clamp(before, left)
        decision: dict[str, Any] = {"cost_requested": before, "cost": body["cost"]}
        if body.get("start_session") or "session_time" in body:
            body["session_time"] = self._clamp(body.get("session_time"), left)
            decision["session_time"] = body["session_time"]
        return decision

    def rewrite_session(self, body: dict[str, Any]) -> dict[str, Any]:
        left = self.check_new_work("session")
        before = body.get("max_ttl")
        body["max_ttl"] = self._clamp(before, left)
        return {"max_ttl_requested": before, "max_ttl": body["max_ttl"]}
