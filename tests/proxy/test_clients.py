"""Client compatibility: every qiskit-ibm-runtime release that can reach a job's proxy, and
IBM's QRMI, unmodified, in scratch venvs layered on one shared base (tests/support/
clientvenvs.py: the base is one pip resolve, ~1 min on a fresh machine; each release then
costs a few seconds), through a real ``qproxy serve`` in front of the session's emulator.

Releases with the ``ibm_quantum_platform`` channel start at 0.40.0 (its account module is the
first to accept the name). 0.40.0-0.48.0 cannot work through a job's proxy with only
environment variables: their ``CloudAuth`` exchanges the API key at a hard-coded
``https://iam.cloud.ibm.com`` (IAM_URL is read from 0.49.0 on), so the per-job token would go
to IBM's IAM and every request would then wait up to 60 s in ibm-cloud-sdk-core's token
pacing before falling back to ``Authorization: apikey``; and from 0.42.0 the constructor asks
IBM Cloud's Global Search for the account's instances at a host derived from QISKIT_IBM_URL
(QISKIT_FUNCTIONS_EXPERIMENTAL is honoured from 0.49.0). ``test_unsupported_release`` pins that
reason for each of them, cheaply, so the list stays true.

Versions: $QPROXY_CLIENT_VERSIONS (comma-separated) overrides the supported list.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from qproxy.clientenv import qrmi_env, qrmi_env_names
from tests.support import clientvenvs
from tests.support.tap import Tap

from .conftest import read_env_file

VERSIONS = os.environ.get("QPROXY_CLIENT_VERSIONS",
                          ",".join(clientvenvs.SUPPORTED_RUNTIME)).split(",")
# The newest patch of each minor release since the channel exists, plus the first one.
UNSUPPORTED = ("0.40.0", "0.40.1", "0.41.1", "0.42.0", "0.43.1", "0.44.1", "0.45.1", "0.46.1",
               "0.47.0", "0.48.0")
QRMI_JOB = Path(__file__).parents[1] / "support" / "qrmi_job.py"

SCRIPT = r"""
import json, warnings
warnings.simplefilter("ignore")
import qiskit_ibm_runtime
from qiskit import QuantumCircuit
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import EstimatorV2, QiskitRuntimeService, SamplerV2

service = QiskitRuntimeService()
names = [b.name for b in service.backends()]
backend = service.backend("ibm_fez")
qc = QuantumCircuit(2); qc.h(0); qc.cx(0, 1)
pm = generate_preset_pass_manager(optimization_level=1, backend=backend)
meas = pm.run(qc.measure_all(inplace=False))
counts = SamplerV2(mode=backend).run([meas], shots=1000).result()[0].data.meas.get_counts()
isa = pm.run(qc)
ev = EstimatorV2(mode=backend).run([(isa, SparsePauliOp("ZZ").apply_layout(isa.layout))])
ev = float(ev.result()[0].data.evs)
jobs = [j.job_id() for j in service.jobs(limit=10)]
print(json.dumps({"version": qiskit_ibm_runtime.__version__, "backends": names,
                  "counts": counts, "ev": ev, "jobs": len(jobs)}))
"""

# What a release's CloudAuth does with the job's IAM_URL (the reason in the module docstring).
PROBE = r"""
import json, os
import qiskit_ibm_runtime.qiskit_runtime_service as svc
from qiskit_ibm_runtime.api.auth import CloudAuth
auth = CloudAuth(os.environ["QISKIT_IBM_TOKEN"], os.environ["QISKIT_IBM_INSTANCE"])
src = open(svc.__file__).read()
print(json.dumps({"iam": auth.tm.url,
                  "functions_experimental": "QISKIT_FUNCTIONS_EXPERIMENTAL" in src}))
"""


def bell_share(counts: dict[str, int]) -> float:
    n = sum(counts.values())
    return (counts.get("00", 0) + counts.get("11", 0)) / n


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("version", VERSIONS)
def test_client_version(version: str, proxy_factory: Any, tmp_path: Path) -> None:
    python = clientvenvs.runtime(version)
    p = proxy_factory(f"80{VERSIONS.index(version)}")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **read_env_file(p.env_file)}
    r = subprocess.run(
        [str(python), "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert Version(out["version"]) == Version(version)
    assert out["backends"] == ["ibm_fez"]
    assert sum(out["counts"].values()) == 1000 and bell_share(out["counts"]) > 0.85
    assert out["ev"] > 0.7 and out["jobs"] == 2
    assert p.stop() == 0


@pytest.mark.slow
@pytest.mark.parametrize("version", UNSUPPORTED)
def test_unsupported_release(version: str, emulator: Any, tmp_path: Path) -> None:
    """Each release listed as unsupported still has the reason given for it: it ignores the
    job's IAM_URL (and QISKIT_FUNCTIONS_EXPERIMENTAL)."""
    python = clientvenvs.runtime(version)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **emulator.env()}
    r = subprocess.run([str(python), "-c", PROBE], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["iam"] == "https://iam.cloud.ibm.com" != env["IAM_URL"]
    assert out["functions_experimental"] is False


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_qrmi(proxy_factory: Any, emulator: Any, tmp_path: Path) -> None:
    """IBM's QRMI job code, unmodified, with the QRMI environment task init sets: service
    discovery, acquire (a Runtime session) / release, SamplerV2, EstimatorV2 and task_runner
    through the job's proxy and its policies; the vendor key appears in nothing the job or the
    proxy puts out. A recording pass-through keeps every answer QRMI got."""
    python = clientvenvs.qrmi()
    p = proxy_factory("8090")
    tap = Tap(p.root).start()
    try:
        job_env = {**read_env_file(p.env_file), "IAM_URL": tap.url}  # the job's proxy, tapped
        job_env.update(qrmi_env("ibm_fez", job_env, 3600))
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **job_env}
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        r = subprocess.run([str(python), str(QRMI_JOB), str(scratch)], env=env,
                           capture_output=True, text=True, timeout=600)
    finally:
        tap.stop()
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["resources"] == ["ibm_fez"] and out["type_ok"] and out["accessible"]
    assert out["session"] and out["metadata"]["session_id"] == out["session"]
    assert out["num_qubits"] == 156
    assert sum(out["counts"].values()) == 1000 and bell_share(out["counts"]) > 0.9
    assert 0.9 < out["ev"] <= 1.0
    assert out["runner_rc"] == 0, out["runner_err"]
    assert sum(out["runner_counts"].values()) == 200 and bell_share(out["runner_counts"]) > 0.9
    assert out["released"] and out["env_names"] == sorted(qrmi_env_names("ibm_fez"))

    api = [e for e in tap.exchanges if "/api/v1/" in e.path]
    # What QRMI sends and expects, as the module docstring of qproxy.clientenv says.
    assert api and all(e.request_headers.get("user-agent") == "SLURM-QRMI-QRS" for e in api)
    assert all(e.path.startswith("/api/v1/") for e in api)  # the real service's prefix
    # IBM-API-Version only on some reads (QRMIService's discovery: GET /backends, for the V2
    # device list, and GET /jobs); creating sessions and jobs and closing go without one.
    versioned = {(e.method, e.path) for e in api if "ibm-api-version" in e.request_headers}
    assert ("GET", "/api/v1/backends") in versioned
    assert all(m == "GET" for m, _ in versioned), versioned
    assert any(e.method != "GET" for e in api)
    assert {e.request_headers["ibm-api-version"] for e in api
            if "ibm-api-version" in e.request_headers} == {"2025-01-01"}
    results = [e for e in api if e.path.endswith("/results")]
    assert len(results) == 3 and all(
        e.response_headers["content-type"].startswith("text/plain") for e in results)
    assert all(e.status < 400 for e in tap.exchanges), [
        (e.method, e.path, e.status) for e in tap.exchanges if e.status >= 400]

    # The proxy's policies applied to QRMI's traffic (audit decisions).
    audit = [json.loads(line) for line in p.audit_log.read_text().splitlines()]
    by = {(a.get("method"), a.get("path")): a for a in audit}
    sess = by[("POST", "/api/v1/sessions")]["decisions"]
    assert sess["mode_requested"] == "dedicated" and sess["mode"] == "batch"
    posts = [a for a in audit if a.get("method") == "POST" and a.get("path") == "/api/v1/jobs"]
    assert len(posts) == 3
    assert all(a["decisions"]["cost_requested"] == 3600 for a in posts)
    assert all(a["decisions"]["cost"] <= 3600 for a in posts)
    assert by[("PATCH", f"/api/v1/sessions/{out['session']}")]["status"] == 204
    assert p.stop() == 0

    # The vendor key: nowhere in the job's environment, what the job printed, any answer it
    # got (bodies and headers), the proxy's log, audit log, ledger or summary.
    key = emulator.api_key
    assert key not in json.dumps(env) and key not in r.stdout + r.stderr
    for e in tap.exchanges:
        assert key.encode() not in e.body and key not in json.dumps(e.response_headers)
    outputs = [p.output(), *(f.read_text() for f in (p.audit_log, p.ledger, p.summary)
                             if f.exists())]
    assert outputs[0] and all(key not in text for text in outputs)
    assert job_env["ibm_fez_QRMI_IBM_QCS_IAM_APIKEY"] == job_env["QISKIT_IBM_TOKEN"] != key
