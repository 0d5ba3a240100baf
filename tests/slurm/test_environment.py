"""The task environment: per-job token (never the vendor secret), user-set values overridden,
and the vendor secret's bytes nowhere a user or the node's logs can see."""

from __future__ import annotations

import json
from pathlib import Path

from qproxy.clientenv import CLIENT_ENV_NAMES
from tests.support.cluster import Cluster

TOOL = Path(__file__).parents[1] / "support" / "jobtool.py"


def test_task_env_injected_and_overrides_user(cluster: Cluster) -> None:
    user_env = {
        "QISKIT_IBM_URL": "http://evil.example/experimental",
        "QISKIT_IBM_TOKEN": "user-token",
        "QPU_LANES": "99",
        "IAM_URL": "http://evil",
    }
    job = cluster.sbatch(
        f"python3 {TOOL} env-dump batch.json\nsrun python3 {TOOL} env-dump step.json\n",
        "--q_backend=ibm_fez",
        "--gres=qpu:2",
        env=user_env,
    )
    assert job.state == "COMPLETED", job.output()
    secret = cluster.vendor_secret()
    tokens = set()
    for name in ("batch.json", "step.json"):
        env = json.loads((job.workdir / name).read_text())
        for key in CLIENT_ENV_NAMES:
            assert key in env, key
        assert env["QISKIT_IBM_URL"].startswith("http://127.0.0.1:")
        assert "experimental" in env["QISKIT_IBM_URL"]
        assert env["IAM_URL"].startswith("http://127.0.0.1:")
        assert env["QPU_BACKEND"] == "ibm_fez" and env["QPU_LANES"] == "2"
        assert env["QISKIT_IBM_TOKEN"] not in ("user-token", secret)
        assert len(env["QISKIT_IBM_TOKEN"]) >= 32
        assert secret not in json.dumps(env)
        tokens.add(env["QISKIT_IBM_TOKEN"])
    assert len(tokens) == 1  # one per job, the same in every step


def test_tokens_differ_between_jobs(cluster: Cluster) -> None:
    seen = []
    for _ in range(2):
        job = cluster.sbatch(
            f"python3 {TOOL} env-dump env.json\n", "--q_backend=ibm_torino", "-L", "ibm_torino:1"
        )
        assert job.state == "COMPLETED", job.output()
        seen.append(json.loads((job.workdir / "env.json").read_text())["QISKIT_IBM_TOKEN"])
    assert seen[0] != seen[1]


def test_record_is_root_only(cluster: Cluster) -> None:
    """While a job runs, its user cannot read the connection record nor the state dir."""
    job = cluster.sbatch(
        f"ls {cluster.run_dir} > ls.txt 2>&1; cat {cluster.run_dir}/$SLURM_JOB_ID/record.json"
        " > cat.txt 2>&1; true\n",
        "--q_backend=ibm_fez",
        "--gres=qpu:1",
    )
    assert job.state == "COMPLETED"
    assert "Permission denied" in (job.workdir / "ls.txt").read_text()
    assert "Permission denied" in (job.workdir / "cat.txt").read_text()
    assert oct(cluster.run_dir.stat().st_mode & 0o777) == "0o700"


def test_vendor_secret_never_leaks(cluster: Cluster) -> None:
    job = cluster.sbatch(
        f"python3 {TOOL} env-dump env.json\nenv\ncat /proc/self/environ\n",
        "--q_backend=ibm_fez",
        "--gres=qpu:1",
    )
    assert job.state == "COMPLETED"
    cluster.wait_gone(job.id)
    secret = cluster.vendor_secret().encode()
    places = [
        job.workdir / "out.txt",
        job.workdir / "env.json",
        *(cluster.state / "log").glob("*.log"),
        *cluster.audit_dir.glob("*"),
        cluster.run_dir / "hooks.log",
    ]
    for path in places:
        if path.is_file():
            assert secret not in path.read_bytes(), path
    # and not in any process environment or command line
    for environ in [*Path("/proc").glob("[0-9]*/environ"), *Path("/proc").glob("[0-9]*/cmdline")]:
        try:
            assert secret not in environ.read_bytes(), environ
        except OSError:
            continue
