"""Typed records for what crosses a process boundary, each with one reader and one writer:

- :class:`ProxyRecord` -- ``{state_dir}/<job>/record.json``: the prolog writes it; task-env,
  the epilog, the reaper and a requeued job's prolog read it.
- :class:`JobSummary` -- ``{state_dir}/<job>/summary.json``: the proxy writes it at shutdown
  (or the epilog builds it from the ledger when the proxy died); the epilog turns it into
- :class:`UsageRecord` -- one line of ``{audit_dir}/usage.jsonl`` per job and node, what
  admins and accounting tools read (``qproxy usage``).
- :class:`ProxyStatus` -- ``{state_dir}/<job>/status.json`` (:data:`STATUS_FILE`): the proxy
  rewrites it whenever its lanes or upstream jobs change; ``qproxy status`` reads it. In the
  job's root-only state dir, so no job user can read another job's (or its own) figures.

The JSON keys are the files' published format (docs/admin.md): a reader accepts only
well-typed values and treats anything else as absent, since a half-written or tampered file
must never crash a root hook. Standard library only: task-env reads a record per task.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Self, cast


def _checked(cls: type, data: Any) -> dict[str, Any] | None:
    """The known keys of ``data`` whose values have their field's JSON type."""
    if not isinstance(data, dict):
        return None
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value: Any = data[f.name]
        kinds = _JSON_KINDS[str(f.type)]
        if value is None and "None" in str(f.type):
            out[f.name] = None
        elif isinstance(value, kinds) and not isinstance(value, bool):
            is_float = str(f.type).startswith("float")
            out[f.name] = float(cast(float, value)) if is_float else value
    return out


_JSON_KINDS: dict[str, tuple[type, ...]] = {
    "str": (str,), "str | None": (str,), "int": (int,), "int | None": (int,),
    "float": (float, int), "float | None": (float, int), "list[str]": (list,),
    "dict[str, str]": (dict,),
}


@dataclass(frozen=True)
class ProxyRecord:
    """The job's connection record: which proxy serves the job and what it was given. Only
    the job and the proxy's pid are required: a record from an older qproxy, or one the
    prolog wrote before it failed, must still let the epilog and the reaper stop the proxy."""

    job_id: str
    pid: int
    user: str = ""
    uid: int = -1
    resource: str = ""
    upstream_backend: str = ""
    lanes: int = 0
    env_file: str = ""
    started: float = 0.0
    account: str = ""
    spare: str | None = None  # the spare process that forked the job's proxy, if one did
    start_ticks: int | None = None  # the proxy's start time (/proc/PID/stat): PID-reuse guard
    # "single" (a one-node job), or a multi-node job's "primary" (its first node: the
    # vendor key, lanes, audit) or "relay" (any other node: forwards to the primary)
    role: str = "single"
    primary: str = ""  # a relay's primary (ADDR:PORT)
    node: str = ""  # a relay's node name (names its audit log, see slurm.state.audit_stem)
    end_time: float = 0.0  # the job's Slurm end time (epoch s; 0 = unlimited): QRMI's timeout

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, data: Any) -> Self | None:
        values = _checked(cls, data)
        try:
            return cls(**values) if values is not None else None
        except TypeError:  # a required key is missing or mistyped
            return None


@dataclass(frozen=True)
class JobSummary:
    """A job's upstream usage as its proxy (or the epilog, from the ledger) counted it."""

    upstream_jobs: int = 0
    sessions: int = 0
    cancelled_at_shutdown: list[str] = field(default_factory=list)
    quantum_seconds: float = 0.0
    job_id: str = ""
    user: str = ""
    backend: str = ""
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    audit_log: str = ""
    audit_head: str = ""
    audit_records: int = 0
    cleanup: str | None = None  # "incomplete" when the shutdown cleanup timed out
    by: str | None = None  # "epilog" when the epilog had to clean up for a dead proxy
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None},
                          indent=2) + "\n"

    @classmethod
    def from_json(cls, data: Any) -> Self | None:
        values = _checked(cls, data)
        if values is None:
            return None
        cancelled = values.get("cancelled_at_shutdown", [])
        values["cancelled_at_shutdown"] = [str(c) for c in cancelled]
        return cls(**values)

    @classmethod
    def from_cleanup(cls, result: dict[str, Any], **extra: Any) -> Self:
        """From ``qproxy.upstream.leftovers.cleanup``'s result dict (its keys are this record's)."""
        summary = cls.from_json({**result, **extra})
        assert summary is not None
        return summary


@dataclass(frozen=True)
class UsageRecord:
    """One job's QPU use on one node, as the epilog (or the reaper) books it."""

    job_id: str
    reason: str  # "epilog" or "reaped"
    resource: str
    lanes: int | None
    user: str | None
    time: float
    proxy: str  # what stopping it did: absent, terminated, killed
    usage: str = ""  # the one-line summary, also in hooks.log
    upstream_jobs: int = 0
    quantum_seconds: float = 0.0
    cancelled_at_shutdown: list[str] = field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0
    by: str | None = None
    error: str | None = None
    audit_head: str | None = None
    # a multi-node job's "primary" or "relay" (whose upstream_jobs is always 0: the
    # primary's line carries the job's QPU usage); absent for a single-node job
    role: str | None = None
    # when the job's proxy started (the lanes were held from then to ``time``), the job's
    # Slurm account and, for a relay, its node; absent in lines of older qproxy versions
    started: float | None = None
    account: str | None = None
    node: str | None = None

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items()
                           if v is not None or k in ("lanes", "user")}, sort_keys=True)

    @classmethod
    def from_json(cls, data: Any) -> Self | None:
        values = _checked(cls, data)
        try:
            return cls(**values) if values is not None else None
        except TypeError:
            return None

    def line(self) -> str:
        return (f"qpu backend={self.resource} lanes={self.lanes} "
                f"upstream_jobs={self.upstream_jobs} "
                f"quantum_seconds={self.quantum_seconds:.3f} "
                f"cancelled={len(self.cancelled_at_shutdown)}")


STATUS_FILE = "status.json"  # next to record.json in the job's state dir
# the proxy's Prometheus text file, beside it (qproxy/proxy/metrics.py, qproxy/admin/metrics.py)
METRICS_FILE = "metrics.prom"


@dataclass(frozen=True)
class ProxyStatus:
    """What a running proxy holds, as it last wrote it: lanes in use (upstream jobs queued or
    running plus submissions that have reserved a lane) and its upstream jobs by state."""

    job_id: str
    pid: int
    port: int = 0
    lanes: int = 0
    lanes_in_use: int = 0
    end_time: float = 0.0  # the job's Slurm end time (epoch s): no new work after it
    jobs: dict[str, str] = field(default_factory=dict)  # upstream job id -> last known state
    requests: int = 0
    updated: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, data: Any) -> Self | None:
        values = _checked(cls, data)
        if values is None:
            return None
        values["jobs"] = {str(k): str(v) for k, v in values.get("jobs", {}).items()}
        try:
            return cls(**values)
        except TypeError:
            return None

    def count(self, state: str) -> int:
        return sum(1 for s in self.jobs.values() if s.lower() == state.lower())
