"""Where the node's metrics files live, and how an ended proxy's figures are retired: the
epilog's part of ``qproxy metrics``, standard library only.

Why apart from qproxy.admin.metrics: the epilog is on every QPU job's path to COMPLETED, and
merging there meant importing prometheus_client (it imports http.server) and parsing two
text files: 170 of the epilog's 215 ms (cProfile, 2 cores). The epilog now only moves the
proxy's final file into ``{state_dir}/metrics-retired.d/`` (a rename, under the lock); the
next ``qproxy metrics`` folds what is there into ``metrics-retired.prom``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qproxy.files import exclusive_lock
from qproxy.records import METRICS_FILE

LIVE_FILE = METRICS_FILE  # in each job's state dir, written by its proxy
RETIRED_FILE = "metrics-retired.prom"  # the folded totals of every ended proxy
PENDING_DIR = "metrics-retired.d"  # ended proxies' files not folded yet
LOCK_FILE = "metrics.lock"
# A fold records the pending files it took in its first line; if it is interrupted after
# writing the totals but before removing them, the next fold skips them (never counted twice).
FOLDED_MARK = "# qproxy folded: "


@contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """The node's metrics lock (retire, fold and read all take it exclusively)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(state_dir / LOCK_FILE):
        yield


def retire(state_dir: Path, job_dir: Path) -> bool:
    """Move an ended proxy's final figures out of its job dir (which the epilog removes next)
    to be folded into the node's totals; False if there were none."""
    live = job_dir / LIVE_FILE
    pending = state_dir / PENDING_DIR
    with locked(state_dir):
        if not live.exists():
            return False
        pending.mkdir(mode=0o700, exist_ok=True)
        os.replace(live, pending / f"{job_dir.name}-{time.time_ns()}.prom")
    return True


# A counter the epilog adds to the node's totals (a retired file of its own, folded like a
# proxy's): runs whose usage it could not book completely.
UNBOOKED = {"qproxy_usage_unbooked": "job runs whose QPU usage the epilog or reaper could not "
                                     "book completely (proxy cleanup timed out or failed, or "
                                     "usage.jsonl could not be written)"}


def unbooked(state_dir: Path, job_id: str, resource: str) -> None:
    """Count one run of RESOURCE whose usage was not booked completely: a file of one
    counter sample into the pending directory (the next ``qproxy metrics`` folds it)."""
    name = next(iter(UNBOOKED))
    text = (f"# HELP {name}_total {UNBOOKED[name]}\n# TYPE {name}_total counter\n"
            f'{name}_total{{resource="{resource}"}} 1.0\n')
    pending = state_dir / PENDING_DIR
    with locked(state_dir):
        pending.mkdir(mode=0o700, exist_ok=True)
        tmp = pending / f".{job_id}-{time.time_ns()}.unbooked"
        tmp.write_text(text)
        os.replace(tmp, pending / f"{job_id}-{time.time_ns()}-unbooked.prom")


def pending_files(state_dir: Path) -> list[Path]:
    try:
        return sorted((state_dir / PENDING_DIR).glob("*.prom"))
    except OSError:
        return []
