"""The few Slurm CLI calls the primitives need, with the fallbacks this kind of cluster needs.

Why the fallbacks: Debian's Slurm 22.05 ``scontrol`` has no ``--json`` (newer ones do), and
without slurmdbd ``sacct`` cannot answer at all, while ``scontrol show job`` forgets a job
MinJobAge seconds after it ends. So a job's state comes from ``scontrol --json`` where it
works, else ``scontrol -o`` text, else ``sacct``; the job's own exit-code file (written by
the batch script) settles the rest.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from typing import Any

# Slurm states by outcome (long and short spellings as squeue/scontrol/sacct print them).
PENDING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                            "RESV_DEL_HOLD", "SUSPENDED", "STOPPED"})
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"})
DONE_STATES = frozenset({"COMPLETED"})
CANCELLED_STATES = frozenset({"CANCELLED", "REVOKED"})
TIMEOUT_STATES = frozenset({"TIMEOUT", "DEADLINE"})
NODE_FAIL_STATES = frozenset({"NODE_FAIL"})
FAILED_STATES = frozenset({"FAILED", "OUT_OF_MEMORY", "BOOT_FAIL", "PREEMPTED", "SPECIAL_EXIT"})
FINAL_STATES = DONE_STATES | CANCELLED_STATES | TIMEOUT_STATES | NODE_FAIL_STATES | FAILED_STATES

_TIMEOUT = 30.0


class SlurmUnavailable(RuntimeError):
    """A Slurm command could not be run or answered nonsense."""


@dataclass(frozen=True)
class JobRecord:
    """What Slurm says about one job (normalised from JSON or ``key=value`` text)."""

    job_id: str
    state: str
    reason: str = ""
    exit_code: str = ""
    user_id: int | None = None
    licenses: dict[str, int] = field(default_factory=dict)
    gres_qpu: int = 0
    admin_comment: str = ""
    source: str = ""


def _run(cmd: list[str], timeout: float = _TIMEOUT,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmUnavailable(f"{cmd[0]} failed: {exc}") from None


def parse_licenses(text: str) -> dict[str, int]:
    """``ibm_fez:2,ibm_torino`` -> {"ibm_fez": 2, "ibm_torino": 1}."""
    out: dict[str, int] = {}
    for item in (text or "").split(","):
        name, _, count = item.strip().partition(":")
        if name and name != "(null)":
            try:
                out[name] = out.get(name, 0) + int(count or 1)
            except ValueError:
                continue
    return out


_GRES = re.compile(r"(?:^|[,\s=])(?:gres[:/])?qpu(?::[^:,()\s]+)?[:(](?:CNT:)?(\d+)")


def gres_qpu(*texts: str) -> int:
    """The qpu count in a gres/TRES string (``gres:qpu:2``, ``qpu(CNT:2)``, ``gres/qpu=2``)."""
    for text in texts:
        m = _GRES.search(text or "")
        if m:
            return int(m.group(1))
        m = re.search(r"gres/qpu=(\d+)", text or "")
        if m:
            return int(m.group(1))
    return 0


# The prolog's AdminComment holds spaces, which `scontrol -o` prints unquoted.
_ADMIN_TEXT = re.compile(r"\bAdminComment=(qpu backend=\S+ lanes=\d+)")


def _state_word(value: Any) -> str:
    if isinstance(value, list):  # newer JSON: ["RUNNING", "COMPLETING"]
        value = value[0] if value else ""
    return str(value or "").split()[0].upper() if value else ""


def _from_text(job_id: str, line: str) -> JobRecord:
    f = dict(re.findall(r"(\S+?)=(\S*)", line))
    uid = re.match(r"\S*\((\d+)\)", f.get("UserId", ""))
    return JobRecord(
        job_id=job_id,
        state=_state_word(f.get("JobState")),
        reason=f.get("Reason", ""),
        exit_code=f.get("ExitCode", ""),
        user_id=int(uid.group(1)) if uid else None,
        licenses=parse_licenses(f.get("Licenses", "")),
        gres_qpu=gres_qpu(f.get("TresPerNode", ""), f.get("TresPerJob", ""),
                          f.get("GRES", ""), f.get("AllocTRES", "")),
        admin_comment=m.group(1) if (m := _ADMIN_TEXT.search(line)) else f.get("AdminComment", ""),
        source="scontrol",
    )


def _from_json(job_id: str, job: dict[str, Any]) -> JobRecord:
    exit_code = job.get("exit_code")
    if isinstance(exit_code, dict):
        exit_code = exit_code.get("return_code", "")
    gres = " ".join(str(x) for x in (job.get("gres_detail") or []))
    return JobRecord(
        job_id=job_id,
        state=_state_word(job.get("job_state")),
        reason=str(job.get("state_reason") or ""),
        exit_code=str(exit_code if exit_code is not None else ""),
        user_id=int(job["user_id"]) if isinstance(job.get("user_id"), int) else None,
        licenses=parse_licenses(str(job.get("licenses") or "")),
        gres_qpu=gres_qpu(gres, str(job.get("tres_per_node") or ""),
                          str(job.get("tres_per_job") or "")),
        admin_comment=str(job.get("admin_comment") or ""),
        source="scontrol-json",
    )


# A job submitted with --export=<anything but plain ALL> (e.g. "ALL,VAR=x") runs with these
# set; sbatch run inside it reads SLURM_EXPORT_ENV as its --export default and sets
# SLURM_GET_USER_ENV=1 again, so every primitive job would make slurmd capture the user's
# login environment (`su - user -c env`) before starting it: measured ~1 s on a third of the
# calls here (slurmd waits a second when su has not exited yet), more with a heavy profile.
INHERITED_EXPORT_VARS = ("SLURM_EXPORT_ENV", "SLURM_GET_USER_ENV")


def submit_env() -> dict[str, str]:
    """The caller's environment, which the primitive job needs as is (PATH, Python, the
    QPROXY_* settings), without the inherited export settings above."""
    return {k: v for k, v in os.environ.items() if k not in INHERITED_EXPORT_VARS}


def _export(args: list[str]) -> list[str]:
    """``--export=ALL`` unless the caller's extra sbatch arguments chose otherwise."""
    return args if any(a.startswith("--export") for a in args) else ["--export=ALL", *args]


class Slurm:
    """Submits, queries and cancels jobs with the user's own Slurm CLI (no root, no daemon)."""

    def __init__(self) -> None:
        self._json_ok: bool | None = None  # does `scontrol --json show job` work here?
        self._sacct_ok = True

    def submit(self, args: list[str], script: str) -> str:
        """``sbatch --parsable ARGS SCRIPT`` -> job id; raise SlurmUnavailable with sbatch's
        message (the caller turns it into SlurmSubmitError)."""
        out = _run(["sbatch", "--parsable", *_export(args), script], env=submit_env())
        m = re.match(r"(\d+)", out.stdout.strip())
        if out.returncode != 0 or not m:
            msg = " ".join((out.stderr or out.stdout).split())[:800]
            raise SlurmUnavailable(f"sbatch exited {out.returncode}: {msg}")
        return m.group(1)

    def cancel(self, job_id: str) -> None:
        out = _run(["scancel", job_id])
        if out.returncode != 0 and "Invalid job id" not in out.stderr:
            raise SlurmUnavailable(f"scancel {job_id}: {out.stderr.strip()[:300]}")

    def show(self, job_id: str) -> JobRecord | None:
        """The job as scontrol (or sacct) knows it; None when Slurm has forgotten it."""
        if self._json_ok is not False:
            out = _run(["scontrol", "--json", "show", "job", job_id])
            try:
                jobs = json.loads(out.stdout).get("jobs") if out.returncode == 0 else None
            except ValueError:
                jobs = None
            if isinstance(jobs, list):
                self._json_ok = True
                for job in jobs:
                    if isinstance(job, dict) and str(job.get("job_id")) == job_id:
                        return _from_json(job_id, job)
                return self._sacct(job_id)
            if "Invalid job id" in out.stderr and self._json_ok:
                return self._sacct(job_id)
            self._json_ok = False
        out = _run(["scontrol", "-o", "show", "job", job_id])
        if out.returncode == 0 and out.stdout.strip():
            return _from_text(job_id, out.stdout.splitlines()[0])
        if "Invalid job id" not in out.stderr:
            raise SlurmUnavailable(f"scontrol show job {job_id}: {out.stderr.strip()[:300]}")
        return self._sacct(job_id)

    def _sacct(self, job_id: str) -> JobRecord | None:
        """sacct needs slurmdbd; where it cannot answer, stop asking it."""
        if not self._sacct_ok:
            return None
        out = _run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State,ExitCode"])
        line = out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
        if out.returncode != 0 or not line:
            if out.returncode != 0:
                self._sacct_ok = False
            return None
        state, _, code = line.partition("|")
        if _state_word(state) not in FINAL_STATES | PENDING_STATES | RUNNING_STATES:
            self._sacct_ok = False  # e.g. "Slurm accounting storage is disabled"
            return None
        return JobRecord(job_id=job_id, state=_state_word(state), exit_code=code,
                         source="sacct")

    def license_total(self, name: str) -> int | None:
        out = _run(["scontrol", "-o", "show", "licenses", name])
        m = re.search(r"Total=(\d+)", out.stdout)
        return int(m.group(1)) if out.returncode == 0 and m else None

    def gres_qpu_total(self, partition: str | None = None) -> int:
        """qpu GRES over the nodes (of the partition) — the most any one job could hold."""
        cmd = ["scontrol", "-o", "show", "node"]
        out = _run(cmd)
        nodes = set()
        if partition:
            p = _run(["scontrol", "-o", "show", "partition", partition])
            m = re.search(r"\bNodes=(\S+)", p.stdout)
            if m:
                h = _run(["scontrol", "show", "hostnames", m.group(1)])
                nodes = set(h.stdout.split())
        total = 0
        for line in out.stdout.splitlines():
            f = dict(re.findall(r"(\S+?)=(\S*)", line))
            if nodes and f.get("NodeName") not in nodes:
                continue
            total += gres_qpu(f.get("Gres", ""))
        return total

    def plugstack_qproxy_config(self) -> str | None:
        """The qproxy admin config the SPANK plugin is configured with (plugstack.conf
        ``config=``): the same file the prolog reads, so lane counts agree with it."""
        out = _run(["scontrol", "show", "config"])
        m = re.search(r"^PlugStackConfig\s*=\s*(\S+)", out.stdout, re.M)
        if not m:
            return None
        try:
            text = open(m.group(1)).read()
        except OSError:
            return None
        m = re.search(r"\bconfig=(\S+)", text)
        return m.group(1) if m else None
