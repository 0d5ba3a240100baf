"""IBM's QRMI job code, unmodified, in a real QPU Slurm job on the local cluster as the
unprivileged job user: QRMIService discovery, acquire/release, its SamplerV2 and EstimatorV2
and task_runner, all through the job's proxy with the environment task init sets; then the
job's environment, what it printed and every file it could read are scanned for the vendor
key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qproxy.clientenv import CLIENT_ENV_NAMES, qrmi_env_names
from tests.support import clientvenvs
from tests.support.cluster import Cluster

SUPPORT = Path(__file__).parents[1] / "support"
TOOL = SUPPORT / "jobtool.py"
QRMI_JOB = SUPPORT / "qrmi_job.py"
TIME_LIMIT_MINUTES = 10


def bell_share(counts: dict[str, int]) -> float:
    return (counts.get("00", 0) + counts.get("11", 0)) / sum(counts.values())


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_qrmi_job(qpu_cluster: Cluster) -> None:
    python = clientvenvs.qrmi()  # root-built, world-readable: the job user runs it
    roots = [str(qpu_cluster.state), "/tmp", "/var/tmp", "/dev/shm", "/etc", "/run"]
    job = qpu_cluster.sbatch(
        f"python3 {TOOL} env-dump env.json\n"
        f"mkdir -p scratch && {python} {QRMI_JOB} $PWD/scratch > qrmi.json 2> qrmi.err\n"
        f"echo rc=$? > qrmi.rc\n"
        f"python3 {TOOL} readable readable.json {' '.join(roots)}\n",
        "--q_backend=ibm_fez",
        "--gres=qpu:1",
        f"--time={TIME_LIMIT_MINUTES}",
        # the user's own stale QRMI settings are overridden, as QISKIT_* are
        env={"QRMI_JOB_QPU_RESOURCES": "other", "ibm_fez_QRMI_IBM_QCS_IAM_APIKEY": "mine"},
        timeout=900,
    )
    assert job.state == "COMPLETED", job.output()
    err = job.output("qrmi.err")
    assert job.output("qrmi.rc").strip() == "rc=0", err[-3000:]
    out = json.loads(job.output("qrmi.json").strip().splitlines()[-1])
    assert out["resources"] == ["ibm_fez"] and out["type_ok"] and out["accessible"]
    assert out["session"] and out["metadata"]["session_id"] == out["session"]
    assert sum(out["counts"].values()) == 1000 and bell_share(out["counts"]) > 0.9
    assert 0.9 < out["ev"] <= 1.0
    assert out["runner_rc"] == 0, out["runner_err"]
    assert bell_share(out["runner_counts"]) > 0.9 and out["released"]

    env = json.loads((job.workdir / "env.json").read_text())
    for name in (*CLIENT_ENV_NAMES, *qrmi_env_names("ibm_fez")):
        assert name in env, name
    assert env["QRMI_JOB_QPU_RESOURCES"] == "ibm_fez"
    assert env["QRMI_JOB_QPU_TYPES"] == "ibm-quantum-compute-service"
    assert env["ibm_fez_QRMI_IBM_QCS_IAM_APIKEY"] == env["QISKIT_IBM_TOKEN"]
    assert env["ibm_fez_QRMI_IBM_QCS_ENDPOINT"] == env["IAM_URL"] + "/api/v1"
    assert env["ibm_fez_QRMI_IBM_QCS_SERVICE_CRN"] == env["QISKIT_IBM_INSTANCE"]
    assert 0 < int(env["ibm_fez_QRMI_JOB_TIMEOUT_SECONDS"]) <= TIME_LIMIT_MINUTES * 60

    qpu_cluster.wait_gone(job.id)
    secret = qpu_cluster.vendor_secret().encode()
    assert secret not in json.dumps(env).encode()
    for name in ("out.txt", "qrmi.json", "qrmi.err", "readable.json.proc"):
        assert secret not in (job.workdir / name).read_bytes(), name
    files = json.loads((job.workdir / "readable.json").read_text())
    assert str(qpu_cluster.config) in files  # the scan saw the cluster's files
    assert str(qpu_cluster.state / "emulator.keys") not in files
    leaked = []
    for path in files:
        try:
            if secret in Path(path).read_bytes():
                leaked.append(path)
        except OSError:
            continue
    assert not leaked
