"""Unauthenticated requests: counted, rate-limited, audited as one summary per window.

Anyone on the node can reach the job's port, so a request without this job's credentials
must cost the job nothing it cares about. Measured before this policy: every such request was
one audit record with its full path (an 8 KB ``GET /%01%01...`` wrote 16.5 KB), and one
keep-alive connection wrote ~20 MB/s into the job's audit file. Now they are counted; the
audit log gets one ``unauthenticated`` record per ``unauth_summary_seconds`` with the counts
(and the first path seen, bounded), and past a token bucket (``unauth_rate`` per second,
``unauth_burst``) they are answered 429 at once (still counted, never read further).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

SAMPLE_MAX = 64


class UnauthGate:
    def __init__(self, rate: float, burst: int, window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.window = window
        self.clock = clock
        self._tokens = float(burst)
        self._filled = clock()
        self._opened = clock()
        self.statuses: Counter[int] = Counter()
        self.sample: str | None = None
        self.total = 0

    def allow(self) -> bool:
        """Take a token for one unauthenticated request; False: answer 429."""
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._filled) * self.rate)
        self._filled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def exhausted(self) -> bool:
        """No token left right now (checked before reading an IAM form body)."""
        now = self.clock()
        return self._tokens + (now - self._filled) * self.rate < 1.0

    def count(self, status: int, method: str, path: str) -> None:
        self.statuses[status] += 1
        self.total += 1
        if self.sample is None:
            self.sample = f"{method[:16]} {path[:SAMPLE_MAX]}" + ("..." if len(path) > SAMPLE_MAX
                                                               else "")

    def due(self) -> bool:
        return bool(self.statuses) and self.clock() - self._opened >= self.window

    def take_summary(self) -> dict[str, Any] | None:
        """The counts since the last summary (then reset), or None if there were none."""
        self._opened = self.clock()
        if not self.statuses:
            return None
        out = {"requests": sum(self.statuses.values()),
               "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
               "first": self.sample, "window_seconds": self.window}
        self.statuses.clear()
        self.sample = None
        return out
