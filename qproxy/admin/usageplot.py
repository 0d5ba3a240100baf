"""``qproxy usage --plot FILE.png``: QPU time per account over time (stacked bars) and lane
utilisation (QPU seconds / lane-seconds held) per time bucket, drawn with matplotlib's Agg
backend (no display on a cluster node). Needs the ``plot`` extra (``pip install
qproxy[plot]``).

``draw`` returns the series it drew with the figure, so a caller (and the tests) can check
what is on the picture without reading pixels."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qproxy.admin.usagereport import JobRun

BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class Series:
    """What the figure shows: bucket start times (epoch s, UTC-aligned), QPU seconds per
    account per bucket, and per bucket the utilisation (None where no lane was held)."""

    buckets: list[float]
    qpu_seconds: dict[str, list[float]]
    utilisation: list[float | None]

    def as_dict(self) -> dict[str, Any]:
        return {"buckets": self.buckets, "qpu_seconds": self.qpu_seconds,
                "utilisation": self.utilisation}


def series(job_runs: Iterable[JobRun], bucket: str = "day") -> Series:
    size = BUCKETS[bucket]
    qpu: dict[str, dict[float, float]] = {}
    lane: dict[float, float] = {}
    used: dict[float, float] = {}
    for run in job_runs:
        b = float(int(run.end // size) * size)
        qpu.setdefault(run.account, {})
        qpu[run.account][b] = qpu[run.account].get(b, 0.0) + run.qpu_seconds
        lane[b] = lane.get(b, 0.0) + run.lane_seconds
        used[b] = used.get(b, 0.0) + run.qpu_seconds
    buckets = sorted(lane)
    return Series(
        buckets=buckets,
        qpu_seconds={a: [v.get(b, 0.0) for b in buckets] for a, v in sorted(qpu.items())},
        utilisation=[min(1.0, used[b] / lane[b]) if lane[b] > 0 else None for b in buckets])


def draw(job_runs: Iterable[JobRun], bucket: str = "day") -> tuple[Any, Series]:
    """(matplotlib Figure, the series drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    s = series(job_runs, bucket)
    labels = [datetime.datetime.fromtimestamp(b, datetime.UTC).strftime(
        "%Y-%m-%d" if bucket == "day" else "%m-%d %H:%M") for b in s.buckets]
    x = list(range(len(s.buckets)))
    fig = Figure(figsize=(9, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    base = [0.0] * len(x)
    for account, values in s.qpu_seconds.items():
        top.bar(x, values, bottom=base, label=account)
        base = [a + b for a, b in zip(base, values, strict=True)]
    top.set_ylabel("QPU seconds")
    top.set_title(f"QPU time per account (per {bucket}, UTC)")
    if s.qpu_seconds:
        top.legend(title="account")
    util = [100.0 * u if u is not None else 0.0 for u in s.utilisation]
    bottom.bar(x, util, color="tab:green")
    bottom.set_ylabel("lane utilisation (%)")
    bottom.set_ylim(0, 100)
    bottom.set_title("QPU seconds / lane-seconds held by jobs")
    bottom.set_xticks(x, labels, rotation=30, ha="right")
    return fig, s


def plot(job_runs: Iterable[JobRun], path: Path, bucket: str = "day") -> Series:
    fig, s = draw(job_runs, bucket)
    fig.savefig(path, format="png", dpi=100)
    return s
