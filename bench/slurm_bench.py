"""Benchmark 6: Slurm job turnaround with and without a QPU.

`sbatch` to COMPLETED (past the epilog) for a trivial job, as the cluster's job user, with
`--gres=qpu:1 --q_backend=ibm_fez` (prolog starts a proxy, task init injects its env, epilog
tears it down) vs the same job without them; alternated, medians of >= 10 each.
"""

from __future__ import annotations

import random
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import alternate, median
from qproxy.emulator.reader import EmulatorReader
from tests.support.cluster import EMULATOR_URL, STATE, Cluster, cluster_cmd, cluster_env

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}


_env = cluster_env


def _state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=_env(),
                         capture_output=True, text=True, check=False).stdout
    m = re.search(r"JobState=(\S+)", out)
    return m.group(1) if m else ""


ALLOCATED: dict[str, float] = {}


def _allocated_at(job_id: str) -> float:
    """When slurmctld allocated the job, from its log (ms resolution, local time)."""
    text = (STATE / "log" / "slurmctld.log").read_text(errors="replace")
    m = re.search(r"\[(\S+?)(\.\d+)?\] (?:sched: Allocate|sched/backfill: _start_job: Started)"
                  r" JobId=" + job_id + " ", text)
    if not m:
        raise RuntimeError(f"no allocation of job {job_id} in slurmctld.log")
    whole = time.mktime(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    return whole + float(m.group(2) or 0)


def turnaround(workdir: Path, qpu: bool, alloc: list[float] | None = None) -> float:
    """sbatch -> COMPLETED. slurmctld schedules on a ~1 s tick, so each submission first
    waits a random fraction of a second: back-to-back submissions would otherwise be
    phase-locked to the tick and fold the previous job's duration into this one's wait."""
    time.sleep(random.random())
    script = workdir / "trivial.sh"
    args = ["--gres=qpu:1", "--q_backend=ibm_fez"] if qpu else []
    t0 = time.perf_counter()
    proc = Cluster(STATE, _env()).as_user(
        "sbatch", "--parsable", "-o", "/dev/null", *args, str(script), cwd=workdir)
    m = re.match(r"(\d+)", proc.stdout.strip())
    if not m:
        raise RuntimeError(f"sbatch failed: {proc.stderr.strip()}")
    job_id = m.group(1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = _state(job_id)
        if state in FINAL:
            if state != "COMPLETED":
                raise RuntimeError(f"job {job_id} ended {state}")
            elapsed = time.perf_counter() - t0
            if alloc is not None:
                alloc.append(time.time() - _allocated_at(job_id))
            return elapsed
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id} did not finish")


def run(work: Path, quick: bool) -> list[dict[str, Any]]:
    cluster_cmd("up", check=True, stdout=subprocess.DEVNULL)
    # a just-started emulator builds its noise models for ~20-30 s of CPU; the hooks measured
    # here are short Python processes that would be timed against that on 2 cores
    cluster = Cluster(STATE, _env())
    EmulatorReader(EMULATOR_URL, cluster.vendor_secret()).wait_warm(300)
    workdir = cluster.workdir()
    script = workdir / "trivial.sh"
    script.write_text("#!/bin/bash\ntrue\n")
    script.chmod(0o755)
    turnaround(workdir, False)  # warm-up both paths
    turnaround(workdir, True)
    ab: list[float] = []
    asub: list[float] = []
    b, s = alternate(lambda: turnaround(workdir, False, ab),
                     lambda: turnaround(workdir, True, asub), 6 if quick else 15)
    added = (median(s) - median(b)) * 1000
    a_added = (median(asub) - median(ab)) * 1000
    return [{
        "bench": "6. sbatch->COMPLETED",
        "baseline_ms": round(median(b) * 1000), "subject_ms": round(median(s) * 1000),
        "added_ms": round(added), "ratio": round(median(s) / median(b), 3),
        "target": "<= 300 ms added", "ok": added <= 300,
    }, {
        "bench": "6. allocation->COMPLETED",
        "baseline_ms": round(median(ab) * 1000), "subject_ms": round(median(asub) * 1000),
        "added_ms": round(a_added), "ratio": round(median(asub) / median(ab), 3),
        "target": "<= 300 ms added", "ok": a_added <= 300,
    }]
