"""Unauthenticated requests: counted, rate-limited per uid, audited as one summary per window.

Anyone on the node can reach the job's port, so a request without this job's credentials
must cost the job nothing it cares about. Measured before this policy: every such request was
one audit record with its full path (an 8 KB ``GET /%01%01...`` wrote 16.5 KB), and one
keep-alive connection wrote ~20 MB/s into the job's audit file. Now they are counted; the
audit log gets one ``unauthenticated`` record per ``unauth_summary_seconds`` with the counts
(per status and per uid, and the first path seen, bounded), and past a token bucket
(``unauth_rate`` per second, ``unauth_burst``) they are answered 429 at once (still counted,
never read further).

One bucket per uid of the connection's other end (``peer.py``, asked once per connection
by the connection guard), not one for the proxy: with one shared bucket a neighbour's junk
emptied it and the job's own refused requests (an expired JWT's 401) became 429s; a uid's
junk now spends only that uid's bucket. The token exchange is judged by the token first
(``routes/iam.py``): a valid one is served whatever any bucket holds. Unknown uids (no
loopback peer) share the bucket ``None``; at most ``MAX_KEYS`` uids have a bucket of their
own (a full bucket is dropped first: it is the same as a new one), beyond that they share
``None`` as well.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

SAMPLE_MAX = 64
MAX_KEYS = 256  # uids with a bucket of their own
SUMMARY_UIDS = 16  # uids named in one summary record (the others are counted as "other")


class UnauthGate:
    def __init__(self, rate: float, burst: int, window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.window = window
        self.clock = clock
        self._buckets: dict[int | None, list[float]] = {}  # key -> [tokens, filled at]
        self._opened = clock()
        self.statuses: Counter[int] = Counter()
        self.uids: Counter[str] = Counter()
        self.sample: str | None = None
        self.total = 0

    def _bucket(self, key: int | None, now: float) -> list[float]:
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= MAX_KEYS:
                for k, (tokens, filled) in list(self._buckets.items()):
                    if tokens + (now - filled) * self.rate >= self.burst:
                        del self._buckets[k]
                if len(self._buckets) >= MAX_KEYS:
                    key = None  # the overflow shares one bucket
            b = self._buckets.setdefault(key, [self.burst, now])
        b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
        b[1] = now
        return b

    def allow(self, key: int | None = None) -> bool:
        """Take a token of ``key``'s bucket (a peer uid) for one unauthenticated request;
        False: answer 429."""
        b = self._bucket(key, self.clock())
        if b[0] >= 1.0:
            b[0] -= 1.0
            return True
        return False

    def exhausted(self, key: int | None = None) -> bool:
        """No token left in ``key``'s bucket right now."""
        return self._bucket(key, self.clock())[0] < 1.0

    def count(self, status: int, method: str, path: str, key: int | None = None) -> None:
        self.statuses[status] += 1
        self.total += 1
        who = str(key) if key is not None else "unknown"
        if who in self.uids or len(self.uids) < SUMMARY_UIDS:
            self.uids[who] += 1
        else:
            self.uids["other"] += 1
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
               "uids": dict(sorted(self.uids.items())),
               "first": self.sample, "window_seconds": self.window}
        self.statuses.clear()
        self.uids.clear()
        self.sample = None
        return out
