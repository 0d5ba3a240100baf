"""Remove proxies, records and leases of jobs Slurm no longer runs (cron, slurmd start, or
`scripts/cluster down --all`). Only acts when Slurm answered: never reap on uncertainty."""

from __future__ import annotations

import time

from qproxy.config import Config
from qproxy.records import UsageRecord
from qproxy.slurm import lease, spares
from qproxy.slurm.epilog import finish
from qproxy.slurm.slurmcli import live_job_ids
from qproxy.slurm.state import job_dirs, log

# A job dir younger than this may belong to a job that started after squeue answered.
GRACE_SECONDS = 30.0


def _young(config: Config, job_id: str, since: float) -> bool:
    try:
        return (config.state_dir / job_id).stat().st_mtime > since - GRACE_SECONDS
    except OSError:
        return False


def reap(config: Config, everything: bool = False) -> list[UsageRecord]:
    asked = time.time()
    live = set() if everything else live_job_ids()
    done = []
    for job_id in job_dirs(config):
        if job_id not in live and (everything or not _young(config, job_id, asked)):
            log.info("reap: job %s is not running any more", job_id)
            done.append(finish(config, job_id, "reaped"))
    if everything:  # the node goes down: no spare for a next job
        n = spares.stop_all(config.state_dir)
        if n:
            log.info("reap: stopped %d spare proxies", n)
    else:
        spares.listing(config.state_dir)  # drops files of spares that died
    for resource, held in lease.held(config).items():
        for job_id in held:
            if job_id not in live and job_id not in job_dirs(config):
                log.info("reap: stale lease of job %s on %s", job_id, resource)
                lease.release(config, job_id)
    return done
