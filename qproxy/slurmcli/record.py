"""What Slurm says about one job (:class:`JobRecord`), from any version's ``--json`` job
object or ``scontrol -o show job`` line (the value shapes: :mod:`qproxy.slurmcli.parse`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from qproxy.slurmcli.admincomment import ADMIN_TEXT
from qproxy.slurmcli.parse import (
    exit_code,
    gres_lanes,
    gres_qpu,
    number,
    parse_licenses,
    state_word,
)


@dataclass(frozen=True)
class JobRecord:
    """What Slurm says about one job, normalised from any version's JSON or ``key=value`` text."""

    job_id: str
    state: str
    user: str = ""
    user_id: int | None = None
    account: str = ""
    end_time: float = 0.0  # epoch seconds; 0 = none/unknown (unlimited)
    reason: str = ""
    exit_code: str = ""  # "RC:SIGNAL" as scontrol prints it
    licenses: dict[str, int] = field(default_factory=dict)
    gres_qpu: int = 0  # lanes from --gres=qpu:N
    admin_comment: str = ""
    source: str = ""
    nodes: str = ""  # the allocated nodes as a Slurm host list ("n[1-3]"); "" = none yet
    batch_host: str = ""  # where the batch script runs (the first node); "" = unknown
    restart_cnt: int = 0  # requeues so far: tells one run's AdminComment from the last's
    het_job_id: str = ""  # the leader's id when this job is a heterogeneous job's component


def _epoch(value: Any) -> float:
    t = number(value)
    return 0.0 if t is None or math.isinf(t) else t


def record_from_json(job: dict[str, Any], source: str = "json") -> JobRecord:
    """A ``squeue --json`` / ``scontrol --json`` job of any version."""
    uid = number(job.get("user_id"))
    return JobRecord(
        job_id=str(job.get("job_id")),
        state=state_word(job.get("job_state")),
        user=str(job.get("user_name") or ""),
        user_id=int(uid) if uid is not None and not math.isinf(uid) else None,
        account=str(job.get("account") or ""),
        end_time=_epoch(job.get("end_time")),
        reason=str(job.get("state_reason") or ""),
        exit_code=exit_code(job.get("exit_code")),
        licenses=parse_licenses(str(job.get("licenses") or "")),
        gres_qpu=gres_lanes(job),
        admin_comment=str(job.get("admin_comment") or ""),
        source=source,
        nodes=_host_list(job.get("nodes")),
        batch_host=_host_list(job.get("batch_host")),
        restart_cnt=_count(job.get("restart_cnt")),
        het_job_id=_het_id(job.get("het_job_id")),
    )


def _het_id(value: Any) -> str:
    """22.05 writes 0, v0.0.40+ ``{"set": false, ...}`` for a job that is not a component."""
    n = _count(value)
    return str(n) if n else ""


def _host_list(value: Any) -> str:
    text = str(value or "").strip() if isinstance(value, str) else ""
    return "" if text in ("(null)", "None") else text


def _count(value: Any) -> int:
    n = number(value)
    return int(n) if n is not None and not math.isinf(n) and n >= 0 else 0


def record_from_text(job_id: str, line: str) -> JobRecord:
    """One ``scontrol -o show job`` line (any version). Not for root decisions: the line is
    read as key=value pairs, and the job's user writes text with spaces into it (JobName,
    Comment, WorkDir, Command), so it can carry any field, a forged AdminComment included
    (issue 24); root reads ``squeue --json`` (``record_from_json``). Slurm mode's job status
    (the job's own user reading their own job) is its one reader."""
    f = dict(re.findall(r"(\S+?)=(\S*)", line))
    uid = re.match(r"(\S*?)\((\d+)\)", f.get("UserId", ""))
    return JobRecord(
        job_id=job_id,
        state=state_word(f.get("JobState")),
        user=uid.group(1) if uid else "",
        user_id=int(uid.group(2)) if uid else None,
        account="" if f.get("Account") == "(null)" else f.get("Account", ""),
        reason=f.get("Reason", ""),
        exit_code=f.get("ExitCode", ""),
        licenses=parse_licenses(f.get("Licenses", "")),
        gres_qpu=gres_qpu(f.get("TresPerNode", ""), f.get("TresPerJob", ""),
                          f.get("GRES", ""), f.get("AllocTRES", "")),
        admin_comment=m.group(1) if (m := ADMIN_TEXT.search(line)) else f.get("AdminComment", ""),
        source="scontrol",
        nodes=_host_list(f.get("NodeList")),
        batch_host=_host_list(f.get("BatchHost")),
        restart_cnt=int(f["Restarts"]) if f.get("Restarts", "").isdigit() else 0,
        het_job_id=f.get("HetJobId", "") if f.get("HetJobId", "").isdigit() else "",
    )
