"""What Slurm says about a job (the job's own environment is user-controlled and proves
nothing). Debian's 22.05: ``scontrol`` has no ``--json``, and ``squeue --json`` ignores
``--jobs`` (it lists every job), so we filter here."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any

from qproxy.hooks.state import log

# Job states in which a job may still hold QPU state on a node.
LIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STAGE_OUT",
               "RESIZING", "SIGNALING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD"}


class SlurmError(RuntimeError):
    """Slurm could not be asked (slurmctld down, timeout)."""


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    user: str
    account: str
    state: str
    end_time: float
    gres_qpu: int  # lanes from --gres=qpu:N (allocated on this node)
    licenses: dict[str, int]  # -L name:N


def squeue_all(timeout: float = 20.0) -> list[dict[str, Any]]:
    try:
        out = subprocess.run(["squeue", "--json"], capture_output=True, text=True,
                             timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmError(f"squeue failed: {exc}") from None
    if out.returncode != 0:
        raise SlurmError(f"squeue --json exited {out.returncode}: {out.stderr.strip()[:200]}")
    try:
        jobs = json.loads(out.stdout).get("jobs", [])
    except ValueError as exc:
        raise SlurmError(f"squeue --json: bad JSON ({exc})") from None
    return [j for j in jobs if isinstance(j, dict)]


_GRES = re.compile(r"(?:^|[,\s])(?:gres[:/])?qpu(?::[^:,()]+)?[:(](?:CNT:)?(\d+)")


def gres_lanes(job: dict[str, Any]) -> int:
    """qpu count allocated (gres_detail, e.g. ``qpu(CNT:2)``) or requested (tres_per_*)."""
    for detail in job.get("gres_detail") or []:
        m = _GRES.search(str(detail))
        if m:
            return int(m.group(1))
    for key in ("tres_per_node", "tres_per_job", "tres_per_task", "tres_per_socket"):
        m = _GRES.search(str(job.get(key) or ""))
        if m:
            return int(m.group(1))
    return 0


def parse_licenses(text: str) -> dict[str, int]:
    result: dict[str, int] = {}
    for item in (text or "").split(","):
        name, _, count = item.strip().partition(":")
        if name:
            try:
                result[name] = result.get(name, 0) + int(count or 1)
            except ValueError:
                continue
    return result


def job_info(job_id: str, jobs: list[dict[str, Any]] | None = None) -> JobInfo:
    for job in squeue_all() if jobs is None else jobs:
        if str(job.get("job_id")) == job_id:
            return JobInfo(
                job_id=job_id,
                user=str(job.get("user_name") or ""),
                account=str(job.get("account") or ""),
                state=str(job.get("job_state") or ""),
                end_time=float(job.get("end_time") or 0),
                gres_qpu=gres_lanes(job),
                licenses=parse_licenses(str(job.get("licenses") or "")),
            )
    raise SlurmError(f"job {job_id} not found in squeue")


def live_job_ids() -> set[str]:
    return {str(j.get("job_id")) for j in squeue_all() if j.get("job_state") in LIVE_STATES}


def set_admin_comment(job_id: str, text: str) -> bool:
    return finish_admin_comment(job_id, start_admin_comment(job_id, text))


def start_admin_comment(job_id: str, text: str) -> subprocess.Popen[str] | None:
    """Start ``scontrol update job=N AdminComment=...``; the prolog does its own work while
    it runs and collects the answer with ``finish_admin_comment``."""
    try:
        return subprocess.Popen(["scontrol", "update", f"job={job_id}", f"AdminComment={text}"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        log.warning("job %s: scontrol update AdminComment failed: %s", job_id, exc)
        return None


def finish_admin_comment(job_id: str, proc: subprocess.Popen[str] | None,
                         timeout: float = 15) -> bool:
    if proc is None:
        return False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        log.warning("job %s: scontrol update AdminComment timed out", job_id)
        return False
    if proc.returncode != 0:
        log.warning("job %s: scontrol update AdminComment: %s", job_id,
                    (err or out).strip()[:200])
    return proc.returncode == 0
