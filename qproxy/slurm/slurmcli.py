"""Slurm's command line, read in one place: what the root hooks ask about a job (its user,
account, QPU allocation, end time) and what the job-side Slurm-mode primitives submit, query
and cancel. The job's own environment is user-controlled and proves nothing; Slurm's answer is
what counts.

Why the shapes and fallbacks (each checked on Debian's 22.05.8, 24.11.5 and 26.05.x):
- ``squeue --json``: 22.05 ignores ``--jobs`` (lists every job), 24.11+ filters, so results
  are always filtered here. From data_parser v0.0.40 on, ``job_state`` is a list
  (``["RUNNING"]``) and times are ``{"set", "infinite", "number"}`` objects, where 22.05 has a
  string and an integer (:func:`state_word`, :func:`number`).
- ``scontrol --json`` does not exist on 22.05; where it does, ``exit_code`` is
  ``{"status": [...], "return_code": {...}, "signal": {"id": {...}, "name"}}``
  (:func:`exit_code`). Without slurmdbd ``sacct`` cannot answer at all, and ``scontrol show
  job`` forgets a job MinJobAge seconds after it ends, so a job's state comes from
  ``scontrol --json``, else ``scontrol -o`` text, else ``sacct``.
- GRES is spelt ``gres:qpu:2`` (22.05 text), ``gres/qpu:2`` (24.11+ text), ``gres/qpu=2``
  (TRES), ``qpu(CNT:2)`` / ``qpu:2(IDX:0-1)`` (gres_detail); licences ``ibm_fez:2,x`` or
  ``(null)`` (:func:`gres_qpu`, :func:`parse_licenses`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("qproxy.slurm")

# Slurm job states by outcome (long spellings, as squeue/scontrol/sacct print them).
PENDING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                            "RESV_DEL_HOLD", "SUSPENDED", "STOPPED"})
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"})
DONE_STATES = frozenset({"COMPLETED"})
CANCELLED_STATES = frozenset({"CANCELLED", "REVOKED"})
TIMEOUT_STATES = frozenset({"TIMEOUT", "DEADLINE"})
NODE_FAIL_STATES = frozenset({"NODE_FAIL"})
FAILED_STATES = frozenset({"FAILED", "OUT_OF_MEMORY", "BOOT_FAIL", "PREEMPTED", "SPECIAL_EXIT"})
FINAL_STATES = DONE_STATES | CANCELLED_STATES | TIMEOUT_STATES | NODE_FAIL_STATES | FAILED_STATES
# States in which a job may still hold QPU state on a node (the reaper leaves those alone).
LIVE_STATES = PENDING_STATES | RUNNING_STATES

_TIMEOUT = 30.0


class SlurmError(RuntimeError):
    """A Slurm command could not be run, timed out, or answered nonsense."""


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


# ------------------------------------------------------------------------------ value readers
def number(value: Any) -> float | None:
    """A JSON number of any version: ``N`` (22.05) or ``{"set", "infinite", "number"}``
    (v0.0.40+). None when unset; ``inf`` when infinite."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        if value.get("infinite"):
            return math.inf
        if value.get("set") is False:
            return None
        return number(value.get("number"))
    return None


def state_word(value: Any) -> str:
    """``"RUNNING"``, ``["RUNNING", "COMPLETING"]`` or ``"CANCELLED by 0"`` -> the base state."""
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value or "").split()[0].upper() if value else ""


def exit_code(value: Any) -> str:
    """``"RC:SIGNAL"`` from 22.05's integer / string or 24.11's exit-code object."""
    if isinstance(value, dict):
        rc = number(value.get("return_code"))
        signal = value.get("signal")
        sig = number(signal.get("id")) if isinstance(signal, dict) else None
        rc_s = "" if rc is None or math.isinf(rc) else str(int(rc))
        return f"{rc_s}:{int(sig) if sig is not None and not math.isinf(sig) else 0}" if rc_s \
            else ""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int):  # 22.05's squeue --json: the return code alone
        return f"{value}:0"
    return str(value)


def parse_licenses(text: str) -> dict[str, int]:
    """``ibm_fez:2,ibm_torino`` -> {"ibm_fez": 2, "ibm_torino": 1}; ``(null)`` -> {}."""
    out: dict[str, int] = {}
    for item in (text or "").split(","):
        name, _, count = item.strip().partition(":")
        if name and name != "(null)":
            try:
                out[name] = out.get(name, 0) + int(count or 1)
            except ValueError:
                continue
    return out


_GRES = re.compile(r"(?:^|[,\s=])(?:gres[:/])?qpu(?::[^:,()\s=]+)?[:(=](?:CNT:)?(\d+)")


def gres_qpu(*texts: str) -> int:
    """The qpu count in the first GRES/TRES string that has one (``gres:qpu:2``,
    ``gres/qpu:2``, ``gres/qpu=2``, ``qpu(CNT:2)``, ``qpu:2(IDX:0-1)``, ``gres:qpu:fez:2``)."""
    for text in texts:
        m = _GRES.search(text or "")
        if m:
            return int(m.group(1))
    return 0


def gres_lanes(job: dict[str, Any]) -> int:
    """qpu GRES of a JSON job: allocated (``gres_detail``) or else requested (``tres_per_*``)."""
    return gres_qpu(*(str(d) for d in job.get("gres_detail") or []),
                    *(str(job.get(k) or "") for k in ("tres_per_node", "tres_per_job",
                                                      "tres_per_task", "tres_per_socket")))


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


# The prolog's AdminComment (QpuComment below): it holds spaces, which `scontrol -o`
# prints unquoted, so the text parser finds it by this pattern, not by the next blank.
_QPU_FIELDS = r"qpu backend=(\S+) lanes=(\d+)(?: primary=(\S+))?(?: run=(\d+))?"
_ADMIN_TEXT = re.compile(r"\bAdminComment=(" + _QPU_FIELDS + ")")


def record_from_text(job_id: str, line: str) -> JobRecord:
    """One ``scontrol -o show job`` line (any version)."""
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
        admin_comment=m.group(1) if (m := _ADMIN_TEXT.search(line)) else f.get("AdminComment", ""),
        source="scontrol",
        nodes=_host_list(f.get("NodeList")),
        batch_host=_host_list(f.get("BatchHost")),
        restart_cnt=int(f["Restarts"]) if f.get("Restarts", "").isdigit() else 0,
        het_job_id=f.get("HetJobId", "") if f.get("HetJobId", "").isdigit() else "",
    )


@dataclass(frozen=True)
class QpuComment:
    """The AdminComment the prolog sets: ``qpu backend=B lanes=N`` and, for a multi-node
    job, ``primary=ADDR:PORT run=R`` (``primary=failed`` when the first node's proxy could
    not start). Only root / the SlurmUser can set AdminComment, never the job's user."""

    backend: str
    lanes: int
    primary: str = ""
    run: int | None = None


_QPU_COMMENT = re.compile(_QPU_FIELDS + r"(?:\s|$)")


def qpu_comment(text: str) -> QpuComment | None:
    m = _QPU_COMMENT.match(text.strip())
    if not m:
        return None
    return QpuComment(m.group(1), int(m.group(2)), m.group(3) or "",
                      int(m.group(4)) if m.group(4) else None)


def jobs_of(doc: Any) -> list[dict[str, Any]]:
    """The job objects of a ``--json`` answer (anything else is ignored)."""
    jobs = doc.get("jobs") if isinstance(doc, dict) else None
    return [j for j in jobs if isinstance(j, dict)] if isinstance(jobs, list) else []


# ------------------------------------------------------------------------------ running commands
def _run(cmd: list[str], timeout: float = _TIMEOUT,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmError(f"{cmd[0]} failed: {exc}") from None


def squeue_json(job_id: str | None = None, timeout: float = 20.0) -> list[dict[str, Any]]:
    """``squeue --json`` (``--jobs`` where given; filtered here too, see the module doc)."""
    cmd = ["squeue", "--json", *(["--jobs", job_id] if job_id else [])]
    out = _run(cmd, timeout=timeout)
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
    out = _run(["scontrol", "-o", "show", "job", job_id], timeout=timeout)
    if out.returncode != 0 or not out.stdout.strip():
        if "Invalid job id" in out.stderr:
            return None
        raise SlurmError(f"scontrol show job {job_id}: {out.stderr.strip()[:300]}")
    return record_from_text(job_id, out.stdout.splitlines()[0])


def hostnames(host_list: str) -> list[str]:
    """A Slurm host list (``n[1-3],m``) expanded, in Slurm's order; a plain name needs no
    ``scontrol`` (single-node jobs, the common case)."""
    host_list = host_list.strip()
    if not host_list:
        return []
    if not any(c in host_list for c in "[],"):
        return [host_list]
    out = _run(["scontrol", "show", "hostnames", host_list])
    names = out.stdout.split()
    if out.returncode != 0 or not names:
        raise SlurmError(f"scontrol show hostnames {host_list}: {out.stderr.strip()[:200]}")
    return names


def node_addr(name: str) -> str:
    """The node's NodeAddr (its cluster address); the name itself where Slurm gives none."""
    out = _run(["scontrol", "-o", "show", "node", name])
    m = re.search(r"\bNodeAddr=(\S+)", out.stdout)
    if out.returncode != 0 or not m:
        raise SlurmError(f"scontrol show node {name}: {out.stderr.strip()[:200]}")
    return m.group(1) if m.group(1) not in ("(null)", "") else name


def live_jobs() -> dict[str, JobRecord]:
    """Jobs that may hold QPU state on a node (pending or running), as squeue sees them."""
    recs = (record_from_json(j, "squeue") for j in squeue_json())
    return {r.job_id: r for r in recs if r.state in LIVE_STATES}


def live_job_ids() -> set[str]:
    return set(live_jobs())


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


def set_admin_comment(job_id: str, text: str) -> bool:
    return finish_admin_comment(job_id, start_admin_comment(job_id, text))


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


def book_admin_comment(job_id: str, text: str, timeout: float, log_path: str) -> bool:
    """Set a finished job's AdminComment in the accounting database, in the background.

    ``scontrol update`` refuses once the job is completing ("Job has already finished"), but
    slurmdbd takes ``sacctmgr modify job`` from root then (checked on 22.05 and 24.11; users
    cannot change AdminComment, only Comment). Detached, bounded by ``timeout`` (coreutils):
    the epilog is on the path to the node's next job and must not wait for slurmdbd."""
    cmd = ["timeout", str(int(max(timeout, 1))), "sacctmgr", "-i", "modify", "job", "where",
           f"jobid={job_id}", "set", f"AdminComment={text}"]
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError:
        fd = subprocess.DEVNULL  # negative: nothing to close
    try:
        subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                         start_new_session=True, close_fds=True)
    except OSError as exc:
        log.warning("job %s: sacctmgr modify job failed to start: %s", job_id, exc)
        return False
    finally:
        if fd >= 0:
            os.close(fd)
    return True


# A job submitted with --export=<anything but plain ALL> (e.g. "ALL,VAR=x") runs with these
# set; sbatch run inside it reads SLURM_EXPORT_ENV as its --export default and sets
# SLURM_GET_USER_ENV=1 again, so every primitive job would make slurmd capture the user's
# login environment (`su - user -c env`) before starting it: measured ~1 s on a third of the
# calls here (slurmd waits a second when su has not exited yet), more with a heavy profile.
INHERITED_EXPORT_VARS = ("SLURM_EXPORT_ENV", "SLURM_GET_USER_ENV")


# ------------------------------------------------------------------------------ reservations
# The device monitor (qproxy/slurm/monitor.py) holds a down device's licences in a
# reservation: `Flags=LICENSE_ONLY` (22.05 shows it as ANY_NODES) reserves licences and no
# node, and may be created while jobs hold some of them -- those keep running (checked on
# 22.05.8). New jobs asking for the licence then wait with Reason=Licenses until it is deleted.
def reservations() -> dict[str, dict[str, str]]:
    """``scontrol -o show reservation``: name -> its ``key=value`` fields."""
    out = _run(["scontrol", "-o", "show", "reservation"])
    if out.returncode != 0:
        raise SlurmError(f"scontrol show reservation: {out.stderr.strip()[:300]}")
    found = {}
    for line in out.stdout.splitlines():
        fields = dict(re.findall(r"(\S+?)=(\S*)", line))
        if fields.get("ReservationName"):
            found[fields["ReservationName"]] = fields
    return found


def create_licence_reservation(name: str, licences: dict[str, int]) -> None:
    spec = ",".join(f"{k}:{v}" for k, v in sorted(licences.items()))
    out = _run(["scontrol", "create", "reservation", f"ReservationName={name}",
                "StartTime=now", "Duration=infinite", "Users=root", f"Licenses={spec}",
                "Flags=LICENSE_ONLY"])
    if out.returncode != 0:
        raise SlurmError(f"scontrol create reservation {name}: "
                         f"{(out.stderr or out.stdout).strip()[:300]}")


def delete_reservation(name: str) -> None:
    out = _run(["scontrol", "delete", f"reservation={name}"])
    if out.returncode != 0 and "not found" not in out.stderr.lower():
        raise SlurmError(f"scontrol delete reservation {name}: {out.stderr.strip()[:300]}")


def licence_total(name: str) -> int | None:
    """The cluster's count of licence ``name``; None when Slurm has no such licence."""
    out = _run(["scontrol", "-o", "show", "licenses", name])
    m = re.search(r"Total=(\d+)", out.stdout)
    return int(m.group(1)) if out.returncode == 0 and m else None


def pending_jobs() -> list[JobRecord]:
    return [r for r in (record_from_json(j, "squeue") for j in squeue_json())
            if r.state in PENDING_STATES]


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
        """``sbatch --parsable ARGS SCRIPT`` -> job id; raise SlurmError with sbatch's
        message (the caller turns it into SlurmSubmitError)."""
        out = _run(["sbatch", "--parsable", *_export(args), script], env=submit_env())
        m = re.match(r"(\d+)", out.stdout.strip())
        if out.returncode != 0 or not m:
            msg = " ".join((out.stderr or out.stdout).split())[:800]
            raise SlurmError(f"sbatch exited {out.returncode}: {msg}")
        return m.group(1)

    def cancel(self, job_id: str) -> None:
        out = _run(["scancel", job_id])
        if out.returncode != 0 and "Invalid job id" not in out.stderr:
            raise SlurmError(f"scancel {job_id}: {out.stderr.strip()[:300]}")

    def show(self, job_id: str) -> JobRecord | None:
        """The job as scontrol (or sacct) knows it; None when Slurm has forgotten it."""
        if self._json_ok is not False:
            out = _run(["scontrol", "--json", "show", "job", job_id])
            try:
                doc = json.loads(out.stdout) if out.returncode == 0 else None
            except ValueError:
                doc = None
            if isinstance(doc, dict) and isinstance(doc.get("jobs"), list):
                self._json_ok = True
                for job in jobs_of(doc):
                    if str(job.get("job_id")) == job_id:
                        return record_from_json(job, "scontrol-json")
                return self._sacct(job_id)
            if "Invalid job id" in out.stderr and self._json_ok:
                return self._sacct(job_id)
            self._json_ok = False
        rec = show_job_text(job_id, timeout=_TIMEOUT)
        return rec if rec is not None else self._sacct(job_id)

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
        if state_word(state) not in FINAL_STATES | PENDING_STATES | RUNNING_STATES:
            self._sacct_ok = False  # e.g. "Slurm accounting storage is disabled"
            return None
        return JobRecord(job_id=job_id, state=state_word(state), exit_code=code,
                         source="sacct")

    def license_total(self, name: str) -> int | None:
        return licence_total(name)

    def gres_qpu_total(self, partition: str | None = None) -> int:
        """qpu GRES over the nodes (of the partition) — the most any one job could hold."""
        out = _run(["scontrol", "-o", "show", "node"])
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
            with open(m.group(1)) as fh:
                text = fh.read()
        except OSError:
            return None
        m = re.search(r"\bconfig=(\S+)", text)
        return m.group(1) if m else None


# ------------------------------------------------------------------------------ accounting
@dataclass(frozen=True)
class AcctJob:
    """One job's allocation as slurmdbd recorded it (``sacct -X``): what ``qproxy usage``
    joins its usage lines with."""

    job_id: str
    user: str
    account: str
    state: str
    start: float  # epoch seconds; 0 = not started / unknown
    end: float
    elapsed: float  # seconds allocated
    nodes: int


_ACCT_FIELDS = "JobIDRaw,User,Account,State,Start,End,ElapsedRaw,NNodes"


def _acct_time(text: str) -> float:
    """sacct prints epoch seconds under SLURM_TIME_FORMAT=%s; ISO local time otherwise."""
    import datetime

    text = text.strip()
    if text.isdigit():
        return float(text)
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:  # "Unknown", "None"
        return 0.0


def parse_sacct(text: str) -> dict[str, AcctJob]:
    """``sacct -n -P -X -o`` :data:`_ACCT_FIELDS` output -> job id -> record."""
    out: dict[str, AcctJob] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != 8 or not parts[0].isdigit():
            continue
        job_id, user, account, state, start, end, elapsed, nnodes = parts
        out[job_id] = AcctJob(
            job_id=job_id, user=user, account=account, state=state_word(state),
            start=_acct_time(start), end=_acct_time(end),
            elapsed=float(elapsed) if elapsed.isdigit() else 0.0,
            nodes=int(nnodes) if nnodes.isdigit() else 0)
    return out


def sacct_jobs(job_ids: list[str], timeout: float = 60.0) -> dict[str, AcctJob] | None:
    """Accounting records of these jobs; None where sacct cannot answer (no slurmdbd)."""
    ids = sorted({j for j in job_ids if j.isdigit()}, key=int)
    if not ids:
        return {}
    found: dict[str, AcctJob] = {}
    for i in range(0, len(ids), 500):  # keep the command line short
        cmd = ["sacct", "-n", "-P", "-X", "-a", "-j", ",".join(ids[i:i + 500]),
               "-o", _ACCT_FIELDS]
        try:
            out = _run(cmd, timeout=timeout,
                       env=dict(os.environ, SLURM_TIME_FORMAT="%s"))
        except SlurmError:
            return None
        if out.returncode != 0:  # e.g. "Slurm accounting storage is disabled"
            return None
        found.update(parse_sacct(out.stdout))
    return found
