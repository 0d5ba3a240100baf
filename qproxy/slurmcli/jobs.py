"""Job queries of the root hooks and the device monitor: ``squeue --json`` (one job, a
heterogeneous job's components, live and pending jobs) and ``scontrol -o show job``.

``squeue --json`` of 22.05 ignores ``--jobs`` (lists every job), 24.11+ filters, so results
are always filtered here.
"""

from __future__ import annotations

import json
from typing import Any

from qproxy.slurmcli.parse import jobs_of
from qproxy.slurmcli.record import JobRecord, record_from_json, record_from_text
from qproxy.slurmcli.run import SlurmError, run
from qproxy.slurmcli.states import LIVE_STATES, PENDING_STATES


def squeue_json(job_id: str | None = None, timeout: float = 20.0) -> list[dict[str, Any]]:
    """``squeue --json`` (``--jobs`` where given; filtered here too, see the module doc)."""
    cmd = ["squeue", "--json", *(["--jobs", job_id] if job_id else [])]
    out = run(cmd, timeout=timeout)
    if out.returncode != 0:
        if job_id and "Invalid job id" in out.stderr:
            return []
        raise SlurmError(f"squeue --json exited {out.returncode}: {out.stderr.strip()[:200]}")
    try:
        jobs = jobs_of(json.loads(out.stdout))
    except ValueError as exc:
        raise SlurmError(f"squeue --json: bad JSON ({exc})") from None
    return [j for j in jobs if job_id is None or str(j.get("job_id")) == job_id]


def job_info(job_id: str) -> JobRecord:
    """The job as squeue sees it (the prolog's view); SlurmError if it is not there."""
    for job in squeue_json(job_id):
        return record_from_json(job, "squeue")
    raise SlurmError(f"job {job_id} not found in squeue")


def het_components(het_job_id: str) -> list[JobRecord]:
    """Every component of heterogeneous job ``het_job_id`` (squeue filters components by
    the leader's id differently across versions, so all jobs are read and filtered here)."""
    return [rec for rec in (record_from_json(j, "squeue") for j in squeue_json())
            if rec.het_job_id == het_job_id]


def show_job_text(job_id: str, timeout: float = 10.0) -> JobRecord | None:
    """``scontrol -o show job N`` (every version; what a relay node polls for the primary's
    AdminComment); None when Slurm does not know the job."""
    out = run(["scontrol", "-o", "show", "job", job_id], timeout=timeout)
    if out.returncode != 0 or not out.stdout.strip():
        if "Invalid job id" in out.stderr:
            return None
        raise SlurmError(f"scontrol show job {job_id}: {out.stderr.strip()[:300]}")
    return record_from_text(job_id, out.stdout.splitlines()[0])


def live_jobs() -> dict[str, JobRecord]:
    """Jobs that may hold QPU state on a node (pending or running), as squeue sees them."""
    recs = (record_from_json(j, "squeue") for j in squeue_json())
    return {r.job_id: r for r in recs if r.state in LIVE_STATES}


def live_job_ids() -> set[str]:
    return set(live_jobs())


def pending_jobs() -> list[JobRecord]:
    return [r for r in (record_from_json(j, "squeue") for j in squeue_json())
            if r.state in PENDING_STATES]
