"""Accounting records (``sacct -X``) for ``qproxy usage``: what slurmdbd recorded of a job's
allocation (:class:`AcctJob`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from qproxy.slurmcli.parse import state_word
from qproxy.slurmcli.run import SlurmError, run


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
            out = run(cmd, timeout=timeout,
                      env=dict(os.environ, SLURM_TIME_FORMAT="%s"))
        except SlurmError:
            return None
        if out.returncode != 0:  # e.g. "Slurm accounting storage is disabled"
            return None
        found.update(parse_sacct(out.stdout))
    return found
