"""QPU usage over a period, from the epilog's usage lines (``{audit_dir}/usage.jsonl``, one
file per node) joined with Slurm accounting: what ``qproxy usage`` prints and plots.

How lines become job runs (see ``qproxy.slurm.epilog.finish``): every node a job ran on books
one line when its epilog (or the reaper) tears the job down. A single-node job's line (no
``role``) and a multi-node job's ``primary`` line carry the job's lanes and QPU figures; a
``relay`` line carries the same ``lanes`` (the relay's record copies them) but no QPU use of
its own, so relays count as nodes and never as lanes or QPU time -- summing every line's lanes
would count a 3-node job's lanes three times. A requeued job books one primary line per run.
The same line read twice (a file named twice, or copied into a shared directory) counts once.

Lane-seconds allocated are lanes x the run's length: Slurm's ``ElapsedRaw`` when sacct knows
the job and it ran once, else the proxy's lifetime from the line (``time - started``). A run
belongs to the day (UTC) it ended in.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from qproxy.records import UsageRecord
from qproxy.slurmcli.sacct import AcctJob

GROUPS = ("user", "account", "resource", "day")
UNKNOWN = "?"


@dataclass(frozen=True)
class JobRun:
    """One run of one Slurm job, merged over the nodes it ran on."""

    job_id: str
    user: str
    account: str
    resource: str
    start: float  # epoch s; 0 = unknown (a line from before qproxy recorded it)
    end: float
    lanes: int
    qpu_seconds: float
    upstream_jobs: int
    nodes: int  # usage lines of this run (primary + relays)
    elapsed_from: str  # "sacct", "usage" (proxy lifetime) or "unknown"
    complete: bool = True  # False: relays' lines only (the primary's file is missing)

    @property
    def lane_seconds(self) -> float:
        return self.lanes * max(0.0, self.end - self.start) if self.start else 0.0

    def day(self) -> str:
        return datetime.datetime.fromtimestamp(self.end, datetime.UTC).date().isoformat()

    def key(self, by: str) -> str:
        return self.day() if by == "day" else str(getattr(self, by)) or UNKNOWN


@dataclass(frozen=True)
class Row:
    """Totals of one group (or of everything, with ``key`` empty)."""

    key: tuple[str, ...]
    jobs: int
    upstream_jobs: int
    qpu_seconds: float
    lane_seconds: float

    @property
    def lane_hours(self) -> float:
        return self.lane_seconds / 3600.0

    @property
    def idle_share(self) -> float | None:
        """The share of the held lane time during which no QPU work ran (None: unknown)."""
        if self.lane_seconds <= 0:
            return None
        return max(0.0, 1.0 - self.qpu_seconds / self.lane_seconds)

    def as_dict(self, by: tuple[str, ...]) -> dict[str, object]:
        idle = self.idle_share
        return {**dict(zip(by, self.key, strict=True)), "jobs": self.jobs,
                "upstream_jobs": self.upstream_jobs, "qpu_seconds": round(self.qpu_seconds, 3),
                "lane_hours": round(self.lane_hours, 6),
                "idle_share": None if idle is None else round(idle, 4)}


@dataclass
class Loaded:
    records: list[UsageRecord] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    duplicates: int = 0  # identical lines seen more than once
    bad_lines: int = 0


def usage_files(paths: Iterable[Path]) -> list[Path]:
    """Files as given; a directory stands for every ``usage.jsonl`` below it (one per node,
    e.g. each node's audit_dir gathered under one directory)."""
    out: list[Path] = []
    for p in paths:
        found = sorted(p.rglob("usage.jsonl")) if p.is_dir() else [p]
        out += [f for f in found if f not in out]
    return out


def load(paths: Iterable[Path]) -> Loaded:
    """Every well-formed line of the files; OSError for a file that cannot be read."""
    got = Loaded()
    seen: set[str] = set()
    for path in usage_files(paths):
        got.files.append(str(path))
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rec = UsageRecord.from_json(json.loads(line))
            except ValueError:
                rec = None
            if rec is None:
                got.bad_lines += 1
                continue
            canon = rec.to_json()
            if canon in seen:
                got.duplicates += 1
                continue
            seen.add(canon)
            got.records.append(rec)
    return got


def runs(records: Iterable[UsageRecord],
         acct: dict[str, AcctJob] | None = None) -> list[JobRun]:
    """Merge the lines of each job into runs (see the module doc), joined with ``acct``."""
    acct = acct or {}
    by_job: dict[str, list[UsageRecord]] = {}
    for rec in records:
        by_job.setdefault(rec.job_id, []).append(rec)
    out: list[JobRun] = []
    for job_id, recs in by_job.items():
        heads = sorted((r for r in recs if r.role != "relay"), key=lambda r: r.time)
        relays = sorted((r for r in recs if r.role == "relay"), key=lambda r: r.time)
        groups: list[tuple[UsageRecord | None, list[UsageRecord]]] = [(h, []) for h in heads]
        for relay in relays:  # a relay belongs to the primary whose run it ended with
            if groups:
                nearest = min(groups, key=lambda g: abs((g[0].time if g[0] else 0) - relay.time))
                nearest[1].append(relay)
            else:
                groups.append((None, [relay]))
        known = acct.get(job_id) if len(groups) == 1 else None
        for head, rel in groups:
            out.append(_run(job_id, head, rel, known))
    return sorted(out, key=lambda r: (r.end, int(r.job_id) if r.job_id.isdigit() else 0))


def _run(job_id: str, head: UsageRecord | None, relays: list[UsageRecord],
         acct: AcctJob | None) -> JobRun:
    base = head or relays[0]
    start, end, source = base.started or 0.0, base.time, "usage" if base.started else "unknown"
    if acct is not None and acct.start and acct.end:
        start, end, source = acct.end - acct.elapsed, acct.end, "sacct"
    return JobRun(
        job_id=job_id,
        user=(acct.user if acct and acct.user else base.user) or UNKNOWN,
        account=(acct.account if acct and acct.account else base.account) or UNKNOWN,
        resource=base.resource or UNKNOWN, start=start, end=end,
        lanes=(head.lanes or 0) if head else 0,
        qpu_seconds=head.quantum_seconds if head else 0.0,
        upstream_jobs=head.upstream_jobs if head else 0,
        nodes=(1 if head else 0) + len(relays), elapsed_from=source, complete=head is not None)


def in_period(run: JobRun, since: float | None, until: float | None) -> bool:
    """A run counts in the period it ended in."""
    return (since is None or run.end >= since) and (until is None or run.end < until)


def aggregate(job_runs: Iterable[JobRun], by: tuple[str, ...]) -> tuple[list[Row], Row]:
    """One row per distinct key of ``by`` (sorted), and the total."""
    sums: dict[tuple[str, ...], list[float]] = {}
    total = [0.0, 0.0, 0.0, 0.0]
    for run in job_runs:
        key = tuple(run.key(b) for b in by)
        acc = sums.setdefault(key, [0.0, 0.0, 0.0, 0.0])
        for a in (acc, total):
            a[0] += 1
            a[1] += run.upstream_jobs
            a[2] += run.qpu_seconds
            a[3] += run.lane_seconds
    rows = [Row(k, int(v[0]), int(v[1]), v[2], v[3]) for k, v in sorted(sums.items())]
    return rows, Row((), int(total[0]), int(total[1]), total[2], total[3])


def parse_time(text: str) -> float:
    """Epoch seconds, or an ISO date / date-time (UTC unless it names a zone)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use 2026-12-01, 2026-12-01T13:00 or "
                         f"epoch seconds)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()
