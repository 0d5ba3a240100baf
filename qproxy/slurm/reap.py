"""Remove proxies, records and leases of jobs Slurm no longer runs (cron, slurmd start, or
`scripts/cluster down --all`). Only acts when Slurm answered: never reap on uncertainty.

``plan`` decides, ``reap`` does: ``qproxy status`` shows the same plan without acting, so what
an operator is told the reaper would do is what it does."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from qproxy.config import Config
from qproxy.node import sparepool
from qproxy.node.process import serve_processes
from qproxy.records import UsageRecord
from qproxy.slurm import lease, proxyproc, spares
from qproxy.slurm.epilog import finish
from qproxy.slurm.state import JobState, job_dirs, log
from qproxy.slurmcli.jobs import live_job_ids

# A job dir younger than this may belong to a job that started after squeue answered.
GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class ReapAction:
    """One thing the reaper does (or, for ``keep``, deliberately leaves alone)."""

    kind: str  # "finish" (the epilog's teardown), "release" (a lease), "stop" (a proxy),
    #            "keep" (left alone, with the reason)
    job_id: str
    why: str
    pid: int | None = None


def _young(config: Config, job_id: str, since: float) -> bool:
    try:
        return (config.state_dir / job_id).stat().st_mtime > since - GRACE_SECONDS
    except OSError:
        return False


def orphan_proxies(config: Config) -> dict[int, str]:
    """pid -> job id of this node's ``qproxy serve --job-id N`` processes (``--config`` names
    this node's config) whose job has no state dir: nothing would ever stop them."""
    mine = str(config.path.resolve())
    found: dict[int, str] = {}
    for pid, opts in serve_processes().items():
        configs = {v for k, v in opts if k == "--config"}
        jobs = [v for k, v in opts if k == "--job-id"]
        if jobs and any(_same_path(c, mine) for c in configs) and jobs[0].isdigit() and not (
                config.state_dir / jobs[0]).is_dir():
            found[pid] = jobs[0]
    return found


def _same_path(a: str, resolved: str) -> bool:
    try:
        return str(Path(a).resolve()) == resolved
    except OSError:
        return False


def plan(config: Config, live: set[str], asked: float,
         everything: bool = False) -> list[ReapAction]:
    """What ``reap`` does, given the job ids Slurm runs (as asked at ``asked``)."""
    actions: list[ReapAction] = []
    dirs = job_dirs(config)
    for job_id in dirs:
        if everything or job_id not in live and not _young(config, job_id, asked):
            why = "the node goes down" if everything else "Slurm no longer runs the job"
            actions.append(ReapAction("finish", job_id, why))
        elif job_id not in live:
            actions.append(ReapAction("keep", job_id, f"its state is younger than "
                                      f"{GRACE_SECONDS:g} s (a job may be starting)"))
    for resource, held in lease.peek(config).items():
        for job_id in held:
            if job_id not in live and job_id not in dirs:
                actions.append(ReapAction("release", job_id, f"stale lease on {resource}"))
    for pid, job_id in sorted(orphan_proxies(config).items()):
        if everything or job_id not in live:
            actions.append(ReapAction("stop", job_id, "proxy without a record", pid))
        else:
            actions.append(ReapAction("keep", job_id, "proxy without a record, but Slurm "
                                      "still runs the job (reaped once it ends)", pid))
    return actions


def reap(config: Config, everything: bool = False) -> list[UsageRecord]:
    asked = time.time()
    live = set() if everything else live_job_ids()
    done = []
    for action in plan(config, live, asked, everything):
        if action.kind == "finish":
            log.info("reap: job %s is not running any more", action.job_id)
            done.append(finish(config, action.job_id, "reaped"))
        elif action.kind == "release":
            log.info("reap: %s of job %s", action.why, action.job_id)
            lease.release(config, action.job_id)
        elif action.kind == "stop" and action.pid is not None:
            if JobState.of(config, action.job_id).root.is_dir():
                continue  # its job (re)started since the plan: the epilog owns it now
            how = proxyproc.stop(action.pid, action.job_id)
            log.info("reap: %s of job %s (pid %d): %s", action.why, action.job_id,
                     action.pid, how)
    if everything:  # the node goes down: no spare for a next job
        n = spares.stop_all(config.state_dir)
        if n:
            log.info("reap: stopped %d spare proxies", n)
    else:
        sparepool.listing(config.state_dir)  # drops files of spares that died
    return done
