"""Jobs are isolated: job A's token is worthless at job B's proxy, and a job can reach only
the backend Slurm gave it (403 for any other)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.support.cluster import Cluster

TOOL = Path(__file__).parents[1] / "support" / "jobtool.py"


def test_token_of_job_a_refused_by_job_b(cluster: Cluster) -> None:
    a = cluster.sbatch(
        f"python3 {TOOL} env-dump env.json\nsleep 120\n",
        "--q_backend=ibm_fez",
        "--gres=qpu:1",
        wait=False,
    )
    try:
        env_a = a.workdir / "env.json"
        deadline = time.monotonic() + 60
        while not env_a.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        token_a = json.loads(env_a.read_text())["QISKIT_IBM_TOKEN"]
        iam_a = json.loads(env_a.read_text())["IAM_URL"]
        b = cluster.sbatch(
            f'python3 {TOOL} iam "$IAM_URL" "$A_TOKEN"\n'
            f'python3 {TOOL} iam "$IAM_URL" "$QISKIT_IBM_TOKEN"\n'
            f'python3 {TOOL} iam "{iam_a}" "$QISKIT_IBM_TOKEN"\n',
            "--q_backend=ibm_fez",
            "--gres=qpu:1",
            env={"A_TOKEN": token_a},
        )
        assert b.state == "COMPLETED", b.output()
        lines = b.output().split()
        codes = [lines[i + 1] for i, w in enumerate(lines) if w == "iam"]
        assert codes[0] in ("400", "401", "403"), b.output()  # A's token at B's proxy
        assert codes[1] == "200", b.output()  # B's own token works
        assert codes[2] in ("400", "401", "403"), b.output()  # B's token at A's proxy
    finally:
        cluster.as_user("scancel", a.id)


def test_other_backend_forbidden(qpu_cluster: Cluster) -> None:
    job = qpu_cluster.sbatch(
        f"python3 {TOOL} other-backend ibm_torino\n", "--q_backend=ibm_fez", "--gres=qpu:1"
    )
    assert job.state == "COMPLETED", job.output()
    assert "create 403" in job.output()
    assert "config 403" in job.output() or "config 404" in job.output()
