"""The emulator's Quantum System API (qproxy/emulator/qsa.py) against a real S3 server
(SeaweedFS, qproxy/emulator/s3local.py): one emulator (``--api both``, a 2-lane
fake_manila_v2 served as ``test_qs``) and one S3 server for the module. Each fact of IBM's
API (docs/emulator.md) is asserted over raw REST; then IBM's own QRMI client drives it
through its ``ibm-quantum-system`` resource type."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from qproxy.emulator import s3local
from tests.support.emulator import EmulatorProcess, api_headers, launch_emulator

BACKEND = "test_qs"
LANES = 2
MIN_JOB_SECONDS = 0.5
FINAL = ("Completed", "Failed", "Cancelled")
QRMI_JOB = Path(__file__).parents[1] / "support" / "qrmi_qs_job.py"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[EmulatorProcess, s3local.LocalS3]]:
    """The emulator and the S3 server, started (and stopped) side by side. Every job stays
    Running >= 0.5 s, so cancel/delete-while-running are not races."""
    with ThreadPoolExecutor(2) as pool:
        s3_future = pool.submit(s3local.start, tmp_path_factory.mktemp("s3"))
        try:
            e = launch_emulator(tmp_path_factory.mktemp("emulator-qsa"),
                                backends=f"{BACKEND}=fake_manila_v2", lanes=str(LANES),
                                extra_args=["--api", "both", "--min-job-seconds",
                                            str(MIN_JOB_SECONDS)])
        finally:
            s3 = s3_future.result()
        try:
            yield e, s3
        finally:
            # the bucket is scratch: no need to wait for the S3 server's graceful exit
            list(pool.map(lambda stop: stop(), (e.stop, lambda: s3.stop(timeout=0.2))))


@pytest.fixture(scope="module")
def emu(servers: tuple[EmulatorProcess, s3local.LocalS3]) -> EmulatorProcess:
    return servers[0]


@pytest.fixture(scope="module")
def s3(servers: tuple[EmulatorProcess, s3local.LocalS3]) -> s3local.LocalS3:
    return servers[1]


@pytest.fixture(scope="module")
def h(emu: EmulatorProcess) -> dict[str, str]:
    return {**api_headers(emu), "Service-CRN": emu.instance}


def _bell_params(program: str = "sampler", shots: int = 500) -> dict[str, Any]:
    from qiskit import QuantumCircuit
    from qiskit.quantum_info import SparsePauliOp
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_ibm_runtime import RuntimeEncoder
    from qiskit_ibm_runtime.fake_provider import FakeManilaV2

    pm = generate_preset_pass_manager(optimization_level=1, backend=FakeManilaV2(),
                                      seed_transpiler=1)
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    if program == "sampler":
        pubs: list[Any] = [(pm.run(qc.measure_all(inplace=False)), None, shots)]
    else:
        isa = pm.run(qc)
        pubs = [(isa, SparsePauliOp("ZZ").apply_layout(isa.layout))]
    doc = {"pubs": pubs, "version": 2, "support_qiskit": True, "options": {}}
    return dict(json.loads(json.dumps(doc, cls=RuntimeEncoder)))


SAMPLER = _bell_params()


class Client:
    """Raw REST on the emulator's /v1, with the job's S3 objects as QRMI names them."""

    def __init__(self, emu: EmulatorProcess, h: dict[str, str], s3: s3local.LocalS3):
        self.base, self.h, self.s3 = emu.url + "/v1", h, s3

    def storage(self, job_id: str, params: dict[str, Any] | None) -> dict[str, Any]:
        if params is not None:
            self.s3.put(f"input_{job_id}.json", json.dumps(params).encode())
        return {
            "input": {"type": "s3_compatible",
                      "presigned_url": self.s3.presign("GET", f"input_{job_id}.json", 600)},
            "results": {"type": "s3_compatible",
                        "presigned_url": self.s3.presign("PUT", f"results_{job_id}.json", 600)},
            "logs": {"type": "s3_compatible",
                     "presigned_url": self.s3.presign("PUT", f"logs_{job_id}.json", 600)},
        }

    def post(self, job_id: str | None = None, params: dict[str, Any] | None = SAMPLER,
             program: str = "sampler", storage: dict[str, Any] | None = None,
             **extra: Any) -> tuple[str, requests.Response]:
        job_id = job_id or str(uuid.uuid4())
        body = {"id": job_id, "backend": BACKEND, "program_id": program,
                "log_level": "info", "timeout_secs": 300,
                "storage": storage or self.storage(job_id, params), **extra}
        return job_id, requests.post(self.base + "/jobs", json=body, headers=self.h, timeout=30)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.base + path, headers=self.h, timeout=30)

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait(self, job_id: str, timeout: float = 120) -> tuple[dict[str, Any], list[str]]:
        """Poll until final; returns the job and every status seen."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = self.job(job_id)
            if not seen or seen[-1] != doc["status"]:
                seen.append(doc["status"])
            if doc["status"] in FINAL:
                return doc, seen
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} not final after {timeout} s: {seen}")

    def cancel(self, job_id: str) -> requests.Response:
        return requests.post(f"{self.base}/jobs/{job_id}/cancel", headers=self.h, timeout=30)

    def delete(self, job_id: str) -> requests.Response:
        return requests.delete(f"{self.base}/jobs/{job_id}", headers=self.h, timeout=30)


@pytest.fixture
def api(emu: EmulatorProcess, h: dict[str, str], s3: s3local.LocalS3) -> Iterator[Client]:
    client = Client(emu, h, s3)
    yield client
    # every test leaves the lanes free: its jobs are ended and deleted
    for job in client.get("/jobs").json()["jobs"]:
        if job["status"] not in FINAL:
            client.cancel(job["id"])
        client.delete(job["id"])


def assert_error(r: requests.Response, status: int, code: str) -> dict[str, Any]:
    """IBM's Quantum System API error shape, with the code as a string."""
    assert r.status_code == status, r.text
    doc = r.json()
    assert doc["status_code"] == status and doc["title"] and doc["trace"]
    (err,) = doc["errors"]
    assert err["code"] == code, doc
    assert set(err) == {"code", "message", "more_info", "solution"} and err["message"]
    return dict(doc)


def test_backends_lanes_and_documents(api: Client) -> None:
    backends = api.get("/backends").json()["backends"]
    assert backends == [{"name": BACKEND, "status": "online", "message": "available",
                         "version": backends[0]["version"], "locked": False}]
    assert api.get(f"/backends/{BACKEND}").json() == backends[0]
    # this emulator serves both APIs, on the same lanes
    assert api.get(f"/backends/{BACKEND}/lanes").json() == {
        "hpc_workload_manager": {"lanes": LANES}, "ibm_quantum_compute": {"lanes": LANES}}
    config = api.get(f"/backends/{BACKEND}/configuration").json()
    assert config["backend_name"] == BACKEND and config["n_qubits"] == 5
    assert api.get(f"/backends/{BACKEND}/properties").json()["backend_name"] == BACKEND
    assert_error(api.get("/backends/ibm_nowhere"), 404, "1216")
    assert_error(api.get(f"/jobs/{uuid.uuid4()}"), 404, "1291")
    # no sessions, results, logs or metrics endpoints
    for path in (f"/jobs/{uuid.uuid4()}/results", f"/jobs/{uuid.uuid4()}/logs",
                 f"/jobs/{uuid.uuid4()}/metrics", "/sessions"):
        assert_error(api.get(path), 404, "404")
    # the Runtime API beside it keeps its own error shape
    runtime = requests.get(api.base.removesuffix("/v1") + "/api/v1/backends/ibm_nowhere/status",
                           headers=api.h, timeout=10)
    assert runtime.status_code == 404 and "title" not in runtime.json()
    assert runtime.json()["errors"][0]["code"] == 1216  # an integer there


def test_quantum_system_only_mounts_no_runtime_api() -> None:
    """``--api quantum-system``: /api/v1 is not served (checked on the route table; no
    workers start)."""
    from qproxy.emulator.app import create_app
    from qproxy.emulator.backends import Device

    def paths(apis: tuple[str, ...]) -> set[str]:
        app = create_app({BACKEND: Device(BACKEND, "fake_manila_v2")}, ["k"], apis=apis)
        out = {r.canonical for r in app.router.resources()}
        for sub in app._subapps:  # the Quantum System API's sub-application
            out |= {r.canonical for r in sub.router.resources()}  # prefixed already
        return out

    qs_only = paths(("quantum-system",))
    assert "/v1/jobs" in qs_only and not any(p.startswith("/api/") for p in qs_only)
    runtime_only = paths(("runtime",))
    assert "/api/v1/jobs" in runtime_only and "/v1/jobs" not in runtime_only
    with pytest.raises(ValueError):
        paths(("direct-access",))


def test_authentication(emu: EmulatorProcess) -> None:
    assert_error(requests.get(emu.url + "/v1/backends", timeout=10), 401, "1401")
    bad = {"Authorization": "Bearer not-a-token"}
    assert_error(requests.get(emu.url + "/v1/jobs", headers=bad, timeout=10), 401, "1401")
    # the API key itself, as IBM's clients fall back to
    key = {"Authorization": f"apikey {emu.api_key}"}
    assert requests.get(emu.url + "/v1/backends", headers=key, timeout=10).status_code == 200


def test_sampler_through_presigned_urls(api: Client, s3: s3local.LocalS3) -> None:
    from qiskit_ibm_runtime import RuntimeDecoder

    job_id, r = api.post()
    assert r.status_code == 204 and r.content == b""
    doc, seen = api.wait(job_id)
    assert seen[0] == "Running" and seen[-1] == "Completed" and "Queued" not in seen, seen
    assert doc["id"] == job_id and doc["backend"] == BACKEND and doc["program_id"] == "sampler"
    assert doc["timeout_secs"] == 300 and doc["log_level"] == "info"
    for kind in ("input", "results", "logs"):  # the presigned URLs, echoed back
        url = doc["storage"][kind]["presigned_url"]
        assert doc["storage"][kind]["type"] == "s3_compatible"
        assert f"{kind}_{job_id}.json" in url and "X-Amz-Signature=" in url
    assert doc["usage"]["quantum_nanoseconds"] >= MIN_JOB_SECONDS * 1e9  # held Running
    stamps = doc["metrics"]["timestamps"]
    assert stamps["created"] <= stamps["running"] <= stamps["finished"] == doc["end_time"]
    result = json.loads(s3.get(f"results_{job_id}.json"), cls=RuntimeDecoder)
    counts = result[0].data.meas.get_counts()
    assert sum(counts.values()) == 500 and counts.get("00", 0) + counts.get("11", 0) > 400
    logs = s3.get(f"logs_{job_id}.json").decode()
    assert "job accepted" in logs and "job completed" in logs
    assert [j["id"] for j in api.get("/jobs").json()["jobs"]] == [job_id]
    # the Runtime API's records never show it
    runtime = api.base.removesuffix("/v1") + "/api/v1/jobs"
    assert requests.get(runtime, headers=api.h, timeout=10).json()["count"] == 0
    assert requests.get(f"{runtime}/{job_id}", headers=api.h, timeout=10).status_code == 404
    assert_error(api.cancel(job_id), 409, "1306")  # final: nothing to cancel
    assert api.delete(job_id).status_code == 204
    assert_error(api.get(f"/jobs/{job_id}"), 404, "1291")


def test_estimator(api: Client, s3: s3local.LocalS3) -> None:
    from qiskit_ibm_runtime import RuntimeDecoder

    job_id, r = api.post(params=_bell_params("estimator"), program="estimator")
    assert r.status_code == 204
    doc, _ = api.wait(job_id)
    assert doc["status"] == "Completed", doc
    result = json.loads(s3.get(f"results_{job_id}.json"), cls=RuntimeDecoder)
    assert 0.7 < float(result[0].data.evs) <= 1.05


def test_lanes_held_until_delete_and_check_order(api: Client) -> None:
    a, ra = api.post()
    b, rb = api.post()
    assert ra.status_code == rb.status_code == 204
    # both lanes held: a third job is refused, and the lane check comes before the
    # duplicate-id check
    _, rc = api.post()
    doc = assert_error(rc, 429, "1232")
    assert "lane" in doc["errors"][0]["message"]
    assert_error(api.post(job_id=a)[1], 429, "1232")
    # a running job cannot be deleted; a finished one still holds its lane
    assert_error(api.delete(a), 409, "1337")
    api.wait(a)
    api.wait(b)
    assert_error(api.post()[1], 429, "1232")
    assert api.delete(a).status_code == 204
    assert_error(api.post(job_id=b)[1], 409, "1231")  # a lane is free: now the duplicate
    c, rc = api.post()
    assert rc.status_code == 204
    assert api.wait(c)[0]["status"] == "Completed"


def test_cancel_running_job(api: Client, s3: s3local.LocalS3) -> None:
    job_id, r = api.post()
    assert r.status_code == 204
    assert api.job(job_id)["status"] == "Running"
    assert api.cancel(job_id).status_code == 204
    doc = api.job(job_id)
    assert doc["status"] == "Cancelled" and doc["end_time"]
    assert_error(api.cancel(job_id), 409, "1306")
    assert api.delete(job_id).status_code == 204
    assert f"results_{job_id}.json" not in s3.keys("results_")


def test_reservation_locks_the_backend(api: Client, emu: EmulatorProcess) -> None:
    admin = emu.url + f"/admin/backends/{BACKEND}/reservation"
    key = {"Authorization": f"apikey {emu.api_key}"}
    # a bearer token (every client holds one) cannot reserve
    assert requests.put(admin, json={"locked": True}, headers=api.h, timeout=10
                        ).status_code == 401
    try:
        assert requests.put(admin, json={"locked": True}, headers=key, timeout=10
                            ).json() == {"backend": BACKEND, "locked": True}
        assert api.get(f"/backends/{BACKEND}").json()["locked"] is True
        assert_error(api.post()[1], 423, "1233")
    finally:
        requests.put(admin, json={"locked": False}, headers=key, timeout=10)
    assert api.get(f"/backends/{BACKEND}").json()["locked"] is False
    job_id, r = api.post()
    assert r.status_code == 204


def _tampered(url: str) -> str:
    i = url.index("X-Amz-Signature=") + len("X-Amz-Signature=")
    return url[:i] + ("0" if url[i] != "0" else "1") + url[i + 1:]


def test_bad_signature_and_expired_urls_fail_the_job(api: Client, s3: s3local.LocalS3
                                                     ) -> None:
    """The S3 server verifies SigV4: a wrongly signed or expired presigned URL is a 403
    (moto would answer 200), and the emulator fails the job naming which URL, not the URL."""
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=10)
    s3.put("probe", b"x")
    good = s3.presign("GET", "probe", 60)
    assert s3local.http_status(good) == 200
    assert s3local.http_status(_tampered(good)) == 403
    assert s3local.http_status(s3.presign("GET", "probe", 60, signed_at=past)) == 403
    assert s3local.http_status(
        s3.presign("PUT", "probe", 60, signed_at=past), "PUT", b"y") == 403

    bad_input = str(uuid.uuid4())
    storage = api.storage(bad_input, SAMPLER)
    storage["input"]["presigned_url"] = _tampered(storage["input"]["presigned_url"])
    expired_results = str(uuid.uuid4())
    storage2 = api.storage(expired_results, SAMPLER)
    storage2["results"]["presigned_url"] = s3.presign(
        "PUT", f"results_{expired_results}.json", 60, signed_at=past)
    assert api.post(job_id=bad_input, storage=storage)[1].status_code == 204
    assert api.post(job_id=expired_results, storage=storage2)[1].status_code == 204
    for job_id, kind in ((bad_input, "input"), (expired_results, "results")):
        doc, _ = api.wait(job_id)
        assert doc["status"] == "Failed", doc
        assert doc["reason_code"] == 1520 and doc["reason_solution"]
        assert f"job's {kind}" in doc["reason_message"] and "HTTP 403" in doc["reason_message"]
        assert "http" not in doc["reason_message"].lower().replace("http 403", "")
        assert s3.access_key_id not in doc["reason_message"]
    assert f"results_{expired_results}.json" not in s3.keys("results_")


def test_invalid_submissions(api: Client) -> None:
    _, r = api.post(timeout_secs=None)
    assert_error(r, 400, "1400")
    storage = api.storage("x", None)
    storage["logs"]["type"] = "ibmcloud_cos"
    assert_error(api.post(storage=storage)[1], 400, "1400")
    assert_error(api.post(job_id="x" * 257, storage=api.storage("long", None))[1], 400, "1400")
    assert_error(api.post(program="runner")[1], 400, "1400")
    # bad params are the job's failure (the service reads them after the 204)
    job_id, r = api.post(params={"pubs": [], "version": 2})
    assert r.status_code == 204
    doc, _ = api.wait(job_id)
    assert doc["status"] == "Failed" and "pubs" in doc["reason_message"]


def test_qrmi_ibm_quantum_system(api: Client, emu: EmulatorProcess, s3: s3local.LocalS3,
                                 tmp_path: Path) -> None:
    """IBM's QRMI (0.26.4, unmodified) on its ibm-quantum-system resource type, straight at
    the emulator with the S3 server in between: sampler, estimator, status, logs, stop."""
    from tests.support import clientvenvs

    python = clientvenvs.qrmi()
    prefix = f"{BACKEND}_QRMI_IBM_QS_"
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path),
        "QRMI_JOB_QPU_RESOURCES": BACKEND, "QRMI_JOB_QPU_TYPES": "ibm-quantum-system",
        prefix + "ENDPOINT": emu.url, prefix + "IAM_ENDPOINT": emu.url,
        prefix + "IAM_APIKEY": emu.api_key, prefix + "SERVICE_CRN": emu.instance,
        prefix + "AWS_ACCESS_KEY_ID": s3.access_key_id,
        prefix + "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
        prefix + "S3_ENDPOINT": s3.endpoint, prefix + "S3_BUCKET": s3.bucket,
        prefix + "S3_REGION": s3.region,
        f"{BACKEND}_QRMI_JOB_TIMEOUT_SECONDS": "300",
    }
    r = subprocess.run([str(python), str(QRMI_JOB)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["resources"] == [BACKEND] and out["type_ok"] and out["accessible"]
    assert out["num_qubits"] == 5
    counts = out["counts"]
    assert sum(counts.values()) == 1000 and counts.get("00", 0) + counts.get("11", 0) > 800
    assert 0.7 < out["ev"] <= 1.05
    assert out["task_statuses"][0].endswith("Running"), out["task_statuses"]
    assert out["task_statuses"][-1].endswith("Completed"), out["task_statuses"]
    assert "job completed" in out["task_logs"] and out["task_result_len"] > 100
    assert out["running_status"].endswith("Running")
    # QRMI deleted every job it ran (its primitives on completion, task_stop the others):
    # no lane is left held
    assert api.get("/jobs").json()["jobs"] == []
    # the stopped task was cancelled before it was deleted: it never stored a result
    assert f"results_{out['stopped_task']}.json" not in s3.keys("results_")
    assert f"logs_{out['finished_task']}.json" in s3.keys("logs_")
