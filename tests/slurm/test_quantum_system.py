"""A real QPU Slurm job on the on-prem system (``ibm_onprem``: the emulator's Quantum System
API and the cluster's S3 store, kind ``ibm-quantum-system``), as the unprivileged job user:
unmodified qiskit-ibm-runtime (Sampler, Estimator, usage, logs, tags, Session, Batch, cancel,
job list) and IBM's QRMI compute-service client speak the Runtime API to the job's proxy,
which translates. Then the job's environment, its output, the proxy's log and the audit log
are scanned for the system's key, the S3 keys, presigned URLs and the bucket's object names;
and after the epilog the bucket holds nothing of the job and the system no lane for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from qproxy.emulator.s3local import LocalS3
from tests.contract.test_proxy_quantum_system import check_runtime_job
from tests.support import clientvenvs
from tests.support.cluster import EMULATOR_URL, SETTINGS, Cluster

SUPPORT = Path(__file__).parents[1] / "support"
TOOL = SUPPORT / "jobtool.py"
RUNTIME_JOB = SUPPORT / "runtime_job.py"
QRMI_JOB = SUPPORT / "qrmi_job.py"
RESOURCE = "ibm_onprem"


def bucket() -> LocalS3:
    """The cluster's S3 store, with its keys (root's, from the state dir)."""
    from scripts.localcluster.settings import S3_BUCKET

    keys = json.loads((SETTINGS.s3_dir / "keys.json").read_text())
    return LocalS3(SETTINGS.s3_url, S3_BUCKET, keys["access_key_id"],
                   keys["secret_access_key"], None, SETTINGS.s3_dir)


def system_jobs(cluster: Cluster) -> list[dict[str, Any]]:
    r = requests.get(f"{EMULATOR_URL}/v1/jobs", timeout=30,
                     headers={"Authorization": f"apikey {cluster.vendor_secret()}"})
    assert r.status_code == 200, r.text
    return list(r.json()["jobs"])


@pytest.mark.timeout(1500)
def test_onprem_job(qpu_cluster: Cluster) -> None:
    qrmi = clientvenvs.qrmi()
    # every supported qiskit-ibm-runtime (root-built venvs the job user can run: scripts/test
    # builds them before the lanes), then QRMI's client
    runs = "".join(
        f"{clientvenvs.runtime(v)} {RUNTIME_JOB} {RESOURCE} > rt-{v}.json 2> rt-{v}.err\n"
        f"echo rc=$? > rt-{v}.rc\n" for v in clientvenvs.SUPPORTED_RUNTIME)
    job = qpu_cluster.sbatch(
        f"python3 {TOOL} env-dump env.json\n{runs}"
        f"mkdir -p scratch && {qrmi} {QRMI_JOB} $PWD/scratch > qrmi.json 2> qrmi.err\n"
        "echo rc=$? > qrmi.rc\n",
        f"--q_backend={RESOURCE}", f"-L{RESOURCE}:1", "--time=15", timeout=1200)
    assert job.state == "COMPLETED", job.output()
    for v in clientvenvs.SUPPORTED_RUNTIME:
        assert job.output(f"rt-{v}.rc").strip() == "rc=0", (v, job.output(f"rt-{v}.err")[-3000:])
        check_runtime_job(json.loads(job.output(f"rt-{v}.json").strip().splitlines()[-1]),
                          RESOURCE)
    assert job.output("qrmi.rc").strip() == "rc=0", job.output("qrmi.err")[-3000:]
    out = json.loads(job.output("qrmi.json").strip().splitlines()[-1])
    assert out["resources"] == [RESOURCE] and out["released"]
    assert sum(out["counts"].values()) == 1000 and 0.9 < out["ev"] <= 1.0
    qpu_cluster.wait_gone(job.id)

    # after the epilog: nothing of the job in the bucket, no lane held on the system
    store = bucket()
    ledger_ids = {r["upstream_job"] for r in audit_records(qpu_cluster, job.id)
                  if isinstance(r.get("upstream_job"), str)}
    assert len(ledger_ids) >= 3 * 6 + 1  # runtime_job's six (eight from 0.50), QRMI's
    assert not [k for k in store.keys() if any(i in k for i in ledger_ids)]
    assert not ledger_ids & {j["id"] for j in system_jobs(qpu_cluster)}
    usage = qpu_cluster.usage(job.id)
    assert usage is not None and float(usage["quantum_seconds"]) > 0  # type: ignore[arg-type]

    # nothing of the system's or the store's credentials, URLs or object names reached the
    # job, its output, the proxy's log or the audit log
    seen = "\n".join([(job.workdir / "env.json").read_text(), job.output(),
                      *(job.output(f"rt-{v}.{ext}") for v in clientvenvs.SUPPORTED_RUNTIME
                        for ext in ("json", "err")),
                      job.output("qrmi.json"), job.output("qrmi.err"),
                      audit_text(qpu_cluster, job.id), proxy_log(qpu_cluster, job.id)])
    for secret in (qpu_cluster.vendor_secret(), store.access_key_id, store.secret_access_key,
                   store.endpoint, "X-Amz-Signature", "X-Amz-Credential",
                   *(f"results_{i}" for i in ledger_ids)):
        assert secret not in seen, secret


def audit_text(cluster: Cluster, job_id: str) -> str:
    return "".join(p.read_text() for p in cluster.audit_dir.glob(f"job-{job_id}*.jsonl"))


def audit_records(cluster: Cluster, job_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in audit_text(cluster, job_id).splitlines() if line]


def proxy_log(cluster: Cluster, job_id: str) -> str:
    """The proxy's log, kept by the epilog next to the audit log."""
    logs = list(cluster.audit_dir.glob(f"job-{job_id}*.proxy.log"))
    assert logs, "the epilog kept no proxy log"
    return "".join(p.read_text(errors="replace") for p in logs)
