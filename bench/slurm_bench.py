"""Benchmark 6: Slurm job turnaround with and without a QPU.

`sbatch` to COMPLETED (past the epilog) for a trivial job, as the cluster's job user, with
`--gres=qpu:1 --q_backend=ibm_fez` (prolog starts a proxy, task init injects its env, epilog
tears it down) vs the same job without them; alternated, medians of >= 10 each.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, alternate, median

STATE = Path(os.environ.get("QPROXY_CLUSTER_DIR", REPO / ".state" / "cluster")).resolve()
USER = os.environ.get("QPROXY_CLUSTER_USER", "qpuuser")
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}


def _env() -> dict[str, str]:
    return {
        "SLURM_CONF": str(STATE / "slurm" / "slurm.conf"),
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": f"/home/{USER}", "LANG": "C.UTF-8",
    }


def _state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=_env(),
                         capture_output=True, text=True, check=False).stdout
    m = re.search(r"JobState=(\S+)", out)
    return m.group(1) if m else ""


def turnaround(workdir: Path, qpu: bool) -> float:
    script = workdir / "trivial.sh"
    args = ["--gres=qpu:1", "--q_backend=ibm_fez"] if qpu else []
    env = [f"{k}={v}" for k, v in _env().items()]
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["runuser", "-u", USER, "--", "env", "-i", *env, "sbatch", "--parsable",
         "-o", "/dev/null", *args, str(script)],
        capture_output=True, text=True, check=False, cwd=workdir,
    )
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
            return time.perf_counter() - t0
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id} did not finish")


def run(work: Path, quick: bool) -> list[dict[str, Any]]:
    subprocess.run([sys.executable, str(REPO / "scripts" / "cluster"), "up"], check=True,
                   stdout=subprocess.DEVNULL)
    workdir = STATE / "jobs" / "bench"
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["chown", USER, str(workdir)], check=True)
    script = workdir / "trivial.sh"
    script.write_text("#!/bin/bash\ntrue\n")
    script.chmod(0o755)
    turnaround(workdir, False)  # warm-up both paths
    turnaround(workdir, True)
    b, s = alternate(lambda: turnaround(workdir, False), lambda: turnaround(workdir, True),
                     5 if quick else 12)
    added = (median(s) - median(b)) * 1000
    return [{
        "bench": "6. sbatch->COMPLETED",
        "baseline_ms": round(median(b) * 1000), "subject_ms": round(median(s) * 1000),
        "added_ms": round(added), "ratio": round(median(s) / median(b), 3),
        "target": "<= 300 ms added", "ok": added <= 300,
    }]
