"""The job-side Slurm of the Slurm-mode primitives (:class:`Slurm`): submit, query, cancel
with the user's own Slurm CLI.

A job's state: ``scontrol --json`` does not exist on 22.05; without slurmdbd ``sacct`` cannot
answer at all, and ``scontrol show job`` forgets a job MinJobAge seconds after it ends, so a
job's state comes from ``scontrol --json``, else ``scontrol -o`` text, else ``sacct``.
"""

from __future__ import annotations

import json
import os
import re

from qproxy.slurmcli.cluster import licence_total
from qproxy.slurmcli.jobs import show_job_text
from qproxy.slurmcli.parse import gres_qpu, jobs_of, state_word
from qproxy.slurmcli.record import JobRecord, record_from_json
from qproxy.slurmcli.run import TIMEOUT, SlurmError, run
from qproxy.slurmcli.states import FINAL_STATES, PENDING_STATES, RUNNING_STATES

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
        """``sbatch --parsable ARGS SCRIPT`` -> job id; raise SlurmError with sbatch's
        message (the caller turns it into SlurmSubmitError)."""
        out = run(["sbatch", "--parsable", *_export(args), script], env=submit_env())
        m = re.match(r"(\d+)", out.stdout.strip())
        if out.returncode != 0 or not m:
            msg = " ".join((out.stderr or out.stdout).split())[:800]
            raise SlurmError(f"sbatch exited {out.returncode}: {msg}")
        return m.group(1)

    def cancel(self, job_id: str) -> None:
        out = run(["scancel", job_id])
        if out.returncode != 0 and "Invalid job id" not in out.stderr:
            raise SlurmError(f"scancel {job_id}: {out.stderr.strip()[:300]}")

    def show(self, job_id: str) -> JobRecord | None:
        """The job as scontrol (or sacct) knows it; None when Slurm has forgotten it."""
        if self._json_ok is not False:
            out = run(["scontrol", "--json", "show", "job", job_id])
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
        rec = show_job_text(job_id, timeout=TIMEOUT)
        return rec if rec is not None else self._sacct(job_id)

    def _sacct(self, job_id: str) -> JobRecord | None:
        """sacct needs slurmdbd; where it cannot answer, stop asking it."""
        if not self._sacct_ok:
            return None
        out = run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State,ExitCode"])
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
        out = run(["scontrol", "-o", "show", "node"])
        nodes = set()
        if partition:
            p = run(["scontrol", "-o", "show", "partition", partition])
            m = re.search(r"\bNodes=(\S+)", p.stdout)
            if m:
                h = run(["scontrol", "show", "hostnames", m.group(1)])
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
        out = run(["scontrol", "show", "config"])
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
