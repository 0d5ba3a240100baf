"""An unmodified qiskit-ibm-runtime job through a real ``qproxy serve`` whose upstream is the
Quantum System kind: the job speaks the Runtime API, the proxy translates (S3 params,
Queued for busy lanes, its own sessions), and nothing of the system's credentials or of the
bucket's URLs reaches the job; after the proxy's shutdown the bucket holds nothing of it and
the system holds no lane for it."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.contract.conftest import BACKEND, Servers
from tests.proxy.conftest import Proxy, read_env_file, start_proxy
from tests.support import clientvenvs

RESOURCE = "ibm_onprem"


def upstream_table(servers: Servers) -> str:
    """The [upstreams.emu] table's body for the Quantum System kind (tests.proxy.conftest)."""
    return "\n".join([
        'kind = "ibm-quantum-system"', f'url = "{servers.emu.url}"',
        f's3_endpoint = "{servers.s3.endpoint}"', f's3_bucket = "{servers.s3.bucket}"',
        's3_access_key_secret = "s3id"', 's3_secret_key_secret = "s3key"',
        "retry_max_seconds = 0.5"])


def proxy_for(servers: Servers, d: Path, job_id: str, device: str = BACKEND,
              **kw: Any) -> Proxy:
    return start_proxy(servers.emu, d, job_id, backend=RESOURCE, upstream=upstream_table(servers),
                       secrets={"s3id": servers.s3.access_key_id,
                                "s3key": servers.s3.secret_access_key},
                       resources={RESOURCE: (device, 2)}, **kw)


JOB = Path(__file__).parents[1] / "support" / "runtime_job.py"


@pytest.mark.parametrize("version", clientvenvs.SUPPORTED_RUNTIME)
def test_qiskit_runtime_job_through_the_proxy(servers: Servers, tmp_path: Path,
                                              version: str) -> None:
    python = clientvenvs.runtime(version)
    p = proxy_for(servers, tmp_path / "proxy", f"51{clientvenvs.SUPPORTED_RUNTIME.index(version)}")
    env_text = p.env_file.read_text()
    env = {**read_env_file(p.env_file), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([str(python), str(JOB), RESOURCE], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    check_runtime_job(out, RESOURCE)
    ledger = [json.loads(line) for line in p.ledger.read_text().splitlines()]
    ids = {e["id"] for e in ledger if e["kind"] == "job"}
    expected = 6 + 2 * ("executor_bell" in out)  # 0.50+: the executor primitives' two
    assert len(ids) == expected and set(out["listed"]) == ids
    assert p.stop() == 0
    summary = json.loads(p.summary.read_text())
    assert summary["upstream_jobs"] == expected and summary["quantum_seconds"] > 0
    # after the shutdown: nothing in the bucket, nothing held by the system
    assert not [k for k in servers.s3.keys() if any(i in k for i in ids)]
    assert not ids & {j["id"] for j in system_jobs(servers)}
    # nothing secret in what the job got, the proxy's log or the audit log
    seen = "\n".join([env_text, r.stdout, r.stderr, p.output(), p.audit_log.read_text()])
    for secret in servers.secrets():
        assert secret not in seen, secret
    for job_id in ids:  # the bucket's object names stay the proxy's
        assert f"input_{job_id}" not in seen and f"results_{job_id}" not in seen


def check_runtime_job(out: dict[str, Any], resource: str) -> None:
    """What tests/support/runtime_job.py printed: every flow gave the right answer."""
    assert out["backends"] == [resource]
    assert out["bell"] > 0.85 and out["zz"] > 0.7
    assert out["usage"] > 0 and out["logs"] and out["tags"] == ["mine"]
    assert out["session_shots"] == 100 and out["batch_shots"] == [50, 50]
    assert out["cancelled"] in ("CANCELLED", "DONE")
    if "executor_bell" in out:  # 0.50+
        assert out["executor_bell"] > 0.85 and out["executor_zz"] > 0.7


def system_jobs(servers: Servers) -> list[dict[str, Any]]:
    import requests

    r = requests.get(f"{servers.emu.url}/v1/jobs", timeout=30,
                     headers={"Authorization": f"apikey {servers.emu.api_key}"})
    assert r.status_code == 200, r.text
    return list(r.json()["jobs"])


def test_a_busy_system_shows_queued(servers: Servers, tmp_path: Path) -> None:
    """The system's 2 lanes held by another proxy's long jobs: this job's submission is
    Queued with the reason (the system never holds more than its lanes), and runs once a
    lane is free."""
    import requests

    from tests.support.emulator import LONG_JOB_BACKEND, long_sampler_params

    blocker = proxy_for(servers, tmp_path / "blocker", "5201", LONG_JOB_BACKEND)
    victim = proxy_for(servers, tmp_path / "victim", "5202", LONG_JOB_BACKEND, lanes=1)
    hb, hv = blocker.bearer(), victim.bearer()
    long = {"program_id": "sampler", "backend": RESOURCE, "params": long_sampler_params()}
    held = [requests.post(blocker.api + "/jobs", json=long, headers=hb, timeout=60).json()["id"]
            for _ in range(2)]
    r = requests.post(victim.api + "/jobs", headers=hv, timeout=60, json={
        "program_id": "sampler", "backend": RESOURCE,
        "params": long_sampler_params(shots=100)})
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    doc = requests.get(f"{victim.api}/jobs/{job_id}", headers=hv, timeout=30).json()
    assert doc["status"] == "Queued" and "lane" in doc["state"]["reason"]
    on_device = [j["id"] for j in system_jobs(servers) if j["backend"] == LONG_JOB_BACKEND]
    assert sorted(on_device) == sorted(held)
    for h in held:
        assert requests.post(f"{blocker.api}/jobs/{h}/cancel", headers=hb,
                             timeout=30).status_code == 204
    deadline = time.monotonic() + 120
    while doc["status"] not in ("Completed", "Failed", "Cancelled"):
        assert time.monotonic() < deadline, doc
        time.sleep(0.2)
        doc = requests.get(f"{victim.api}/jobs/{job_id}", headers=hv, timeout=30).json()
    assert doc["status"] == "Completed", doc
    assert blocker.stop() == 0 and victim.stop() == 0
    assert not {job_id, *held} & {j["id"] for j in system_jobs(servers)}
