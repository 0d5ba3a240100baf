"""Benchmark 6: Slurm job turnaround with and without a QPU, on every Slurm the tests run.

`sbatch` to COMPLETED (past the epilog) for a trivial job, as the cluster's job user, with
`--gres=qpu:1 --q_backend=ibm_fez` (prolog starts a proxy, task init injects its env, epilog
tears it down) vs the same job without them; alternated, medians of >= 15 each. The host's
Slurm (22.05) in this process; 24.11 and 26.05 each in a child process inside its chroot's
network namespace (``python -m bench.slurm_bench`` there prints its rows as JSON), as
scripts/test runs their tests.

Where the added time goes (each hook logs it in hooks.log: "prolog hook took N ms, M of them
Python's start and imports"): three Python processes in series (prolog, task init, epilog)
at ~140 ms each to start and import on this machine (60 ms of that is `site`: this sandbox's
certifi .pth and the editable install's finder), plus ~90 ms of prolog work (squeue, spare
claim, scontrol update) and ~40 ms of epilog work.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, alternate, median
from qproxy.emulator.reader import EmulatorReader
from scripts.localcluster.settings import Settings
from scripts.localcluster.system import chroot_root
from tests.support.cluster import EMULATOR_URL, SETTINGS, Cluster, cluster_cmd, cluster_env

SLURMROOT = REPO / "scripts" / "slurmroot"
OTHER_SUITES = ("trixie", "sid")  # Slurm 24.11 and 26.05 (scripts/test's DEFAULT_SUITES)
TARGET_MS = 150

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}


_env = cluster_env


def _scontrol() -> list[str]:
    """This cluster's scontrol; a chroot's directly (not `slurmroot exec`, a Python start per
    poll), as this process already runs in that chroot's network namespace."""
    if not SETTINGS.chroot:
        return ["scontrol"]
    return [shutil.which("chroot", path="/usr/sbin:/sbin:/usr/bin") or "chroot",
            str(chroot_root(SETTINGS)), "scontrol"]


SCONTROL: list[str] = []


def _state(job_id: str) -> str:
    if not SCONTROL:
        SCONTROL.extend(_scontrol())
    out = subprocess.run([*SCONTROL, "-o", "show", "job", job_id], env=_env(),
                         capture_output=True, text=True, check=False).stdout
    m = re.search(r"JobState=(\S+)", out)
    return m.group(1) if m else ""


FROM_POLL: list[str] = []  # jobs whose allocation time is the poll's, not the log's


def _allocated_at(job_id: str) -> float | None:
    """When slurmctld allocated the job, from its log (ms resolution, local time); None where
    it logged no allocation (26.05 sometimes allocates a job without a line at this level)."""
    text = (SETTINGS.logs / "slurmctld.log").read_text(errors="replace")
    m = re.search(r"\[(\S+?)(\.\d+)?\] (?:sched: Allocate|sched/backfill: _start_job: Started)"
                  r" JobId=" + job_id + " ", text)
    if not m:
        return None
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
    proc = Cluster(SETTINGS, _env()).as_user(
        "sbatch", "--parsable", "-o", "/dev/null", *args, str(script), cwd=workdir)
    m = re.match(r"(\d+)", proc.stdout.strip())
    if not m:
        raise RuntimeError(f"sbatch failed: {proc.stderr.strip()}")
    job_id = m.group(1)
    deadline = time.monotonic() + 120
    left_pending: float | None = None
    while time.monotonic() < deadline:
        state = _state(job_id)
        now = time.time()
        if left_pending is None and state not in ("", "PENDING"):
            left_pending = now
        if state in FINAL:
            if state != "COMPLETED":
                raise RuntimeError(f"job {job_id} ended {state}")
            elapsed = time.perf_counter() - t0
            if alloc is not None:  # else when this loop first saw it leave PENDING
                at = _allocated_at(job_id)
                if at is None:
                    FROM_POLL.append(job_id)
                alloc.append(now - (at if at is not None else left_pending or now))
            return elapsed
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id} did not finish")


def measure(quick: bool) -> list[dict[str, Any]]:
    """Section 6 on this process's cluster (SUITE)."""
    cluster_cmd("up", check=True, stdout=subprocess.DEVNULL)
    # a just-started emulator builds its noise models for ~20-30 s of CPU; the hooks measured
    # here are short Python processes that would be timed against that on 2 cores
    cluster = Cluster(SETTINGS, _env())
    EmulatorReader(EMULATOR_URL, cluster.vendor_secret()).wait_warm(300)
    version = cluster.as_user("sbatch", "--version").stdout.split()[-1]
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
        "bench": f"6. sbatch->COMPLETED, Slurm {version}",
        "baseline_ms": round(median(b) * 1000), "subject_ms": round(median(s) * 1000),
        "added_ms": round(added), "ratio": round(median(s) / median(b), 3),
        "target": "info (includes sbatch's own start)", "ok": True,
    }, {
        "bench": f"6. allocation->COMPLETED, Slurm {version}",
        "baseline_ms": round(median(ab) * 1000), "subject_ms": round(median(asub) * 1000),
        "added_ms": round(a_added), "ratio": round(median(asub) / median(ab), 3),
        **({"allocated_by_poll": len(FROM_POLL)} if FROM_POLL else {}),
        "target": f"<= {TARGET_MS} ms added", "ok": a_added <= TARGET_MS,
    }]


def _in_chroot(suite: str, quick: bool) -> list[dict[str, Any]]:
    """measure() on SUITE's Slurm, in a child inside its namespace; cleaned up either way."""
    env = dict(os.environ, QPROXY_CLUSTER_SLURM=suite)
    env.pop("QPROXY_CLUSTER_DIR", None)
    netns = Settings.from_argv(["--nodes", "1", "--no-accounting"], env).netns
    try:
        for step in ("build", "netns"):
            done = subprocess.run([sys.executable, str(SLURMROOT), step, suite],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"slurmroot {step} {suite}: {done.stderr.strip()[-300:]}")
        proc = subprocess.run(
            ["ip", "netns", "exec", str(netns), sys.executable, "-m", "bench.slurm_bench",
             *(["--quick"] if quick else [])], cwd=REPO, env=env, capture_output=True,
            text=True, timeout=1800, check=False)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            last = (proc.stderr.strip().splitlines() or [""])[-1]  # the exception's line
            raise RuntimeError(f"section 6 on {suite} exited {proc.returncode}: {last[-300:]}")
        rows: list[dict[str, Any]] = json.loads(lines[-1])
        return rows
    finally:
        subprocess.run([sys.executable, str(REPO / "scripts" / "cluster"), "down", "--slurm",
                        suite], env=env, check=False, capture_output=True)
        subprocess.run([sys.executable, str(SLURMROOT), "umount", suite], check=False,
                       capture_output=True)


def run(work: Path, quick: bool) -> list[dict[str, Any]]:
    rows = measure(quick)
    for suite in OTHER_SUITES:
        if os.geteuid() != 0:
            rows.append({"bench": f"6. allocation->COMPLETED ({suite})", "ok": False,
                         "error": "not root: no chroot or namespace"})
            continue
        try:
            rows.extend(_in_chroot(suite, quick))
        except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
            rows.append({"bench": f"6. allocation->COMPLETED ({suite})", "ok": False,
                         "error": str(exc)})
    return rows


if __name__ == "__main__":  # inside a chroot suite's namespace (see _in_chroot)
    print(json.dumps(measure("--quick" in sys.argv[1:])))
