"""The emulator's REST surface seen over raw HTTP: auth, error shapes, mounts, job life cycle.

These are the contracts the proxy relies on when it talks to the emulator upstream.
"""

from __future__ import annotations

import json
import time

import jwt
import pytest
import requests
from qiskit import QuantumCircuit

pytestmark = [pytest.mark.timeout(400)]

PREFIXES = ("/api/v1", "/experimental/api/v1")


def token(emulator) -> str:  # type: ignore[no-untyped-def]
    r = requests.post(
        emulator.url + "/identity/token",
        data={"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": emulator.api_key},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def auth(emulator) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"Authorization": f"Bearer {token(emulator)}"}


def assert_api_error(r: requests.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body["errors"][0]) >= {"code", "message", "more_info"}
    assert "trace" in body
    return body


def sampler_params(circuit: QuantumCircuit, shots: int = 50) -> dict:
    from qiskit_ibm_runtime import RuntimeEncoder

    return json.loads(
        json.dumps(
            {"pubs": [(circuit, None, shots)], "version": 2, "support_qiskit": True, "options": {}},
            cls=RuntimeEncoder,
        )
    )


def isa_circuit() -> QuantumCircuit:
    qc = QuantumCircuit(1)
    qc.x(0)
    qc.measure_all()
    return qc


def test_iam_issues_expiring_jwt(emulator) -> None:  # type: ignore[no-untyped-def]
    r = requests.post(
        emulator.url + "/identity/token",
        data={"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": emulator.api_key},
        timeout=10,
    )
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["exp"] == body["expiration"] > time.time()
    assert body["refresh_token"]
    bad = requests.post(
        emulator.url + "/identity/token",
        data={"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": "wrong"},
        timeout=10,
    )
    assert bad.status_code == 400 and "errorMessage" in bad.json()


@pytest.mark.parametrize("prefix", PREFIXES)
def test_runtime_api_requires_valid_token(emulator, prefix) -> None:  # type: ignore[no-untyped-def]
    url = emulator.url + prefix + "/backends"
    assert_api_error(requests.get(url, timeout=10), 401)
    assert_api_error(requests.get(url, headers={"Authorization": "Bearer x.y.z"}, timeout=10), 401)
    forged = jwt.encode(
        {"sub": "x", "exp": time.time() + 60},
        "not-the-secret-but-long-enough-for-hs256!",
        algorithm="HS256",
    )
    assert_api_error(
        requests.get(url, headers={"Authorization": f"Bearer {forged}"}, timeout=10), 401
    )
    assert_api_error(requests.get(url, headers={"Authorization": "apikey nope"}, timeout=10), 401)
    ok = requests.get(url, headers=auth(emulator), timeout=10)
    assert ok.status_code == 200
    assert {d["name"] for d in ok.json()["devices"]} == {"fake_fez", "fake_torino"}
    ok = requests.get(url, headers={"Authorization": f"apikey {emulator.api_key}"}, timeout=10)
    assert ok.status_code == 200


def test_expired_token_is_401() -> None:
    from qproxy.emulator.auth import Authenticator
    from qproxy.emulator.errors import ApiError

    a = Authenticator(["k"], token_ttl=-5)
    access = a.issue("someone")["access_token"]
    with pytest.raises(ApiError) as info:
        a.authenticate(f"Bearer {access}")
    assert info.value.status == 401 and "expired" in info.value.message


def test_backend_documents(emulator) -> None:  # type: ignore[no-untyped-def]
    h = auth(emulator)
    base = emulator.url + "/api/v1/backends/fake_torino"
    conf = requests.get(base + "/configuration", headers=h, timeout=10).json()
    assert conf["backend_name"] == "fake_torino" and conf["n_qubits"] == 133
    props = requests.get(base + "/properties", headers=h, timeout=10).json()
    assert len(props["qubits"]) == 133
    status = requests.get(base + "/status", headers=h, timeout=10).json()
    assert status["state"] is True and status["status"] == "active"
    assert_api_error(
        requests.get(emulator.url + "/api/v1/backends/ibm_nowhere/status", headers=h, timeout=10),
        404,
    )


def test_errors_keep_the_api_shape(emulator) -> None:  # type: ignore[no-untyped-def]
    h = auth(emulator)
    api = emulator.url + "/api/v1"
    assert_api_error(requests.get(api + "/jobs/doesnotexist", headers=h, timeout=10), 404)
    assert_api_error(requests.get(api + "/jobs/doesnotexist/results", headers=h, timeout=10), 404)
    assert_api_error(requests.post(api + "/jobs/doesnotexist/cancel", headers=h, timeout=10), 404)
    assert_api_error(requests.get(api + "/no/such/route", headers=h, timeout=10), 404)
    assert_api_error(requests.post(api + "/jobs", data="{not json", headers=h, timeout=10), 400)
    assert_api_error(requests.post(api + "/jobs", json=[1, 2], headers=h, timeout=10), 400)
    assert_api_error(
        requests.post(
            api + "/jobs", json={"backend": "fake_fez", "params": {}}, headers=h, timeout=10
        ),
        400,
    )
    assert_api_error(
        requests.post(
            api + "/jobs",
            json={"program_id": "circuit-runner", "backend": "fake_fez", "params": {}},
            headers=h,
            timeout=10,
        ),
        404,
    )
    assert_api_error(
        requests.post(
            api + "/jobs",
            json={
                "program_id": "sampler",
                "backend": "nope",
                "params": sampler_params(isa_circuit()),
            },
            headers=h,
            timeout=10,
        ),
        404,
    )
    assert_api_error(
        requests.post(
            api + "/jobs",
            json={
                "program_id": "sampler",
                "backend": "fake_fez",
                "params": {"pubs": "x", "version": 2},
            },
            headers=h,
            timeout=10,
        ),
        400,
    )
    assert_api_error(
        requests.post(
            api + "/jobs",
            json={
                "program_id": "executor",
                "backend": "fake_fez",
                "params": {"schema_version": "v2.0"},
            },
            headers=h,
            timeout=10,
        ),
        400,
    )


def test_job_life_cycle(emulator) -> None:  # type: ignore[no-untyped-def]
    from qproxy.emulator.reader import EmulatorReader

    # the first job waits for its lane's warm-up, which takes minutes on a loaded machine
    assert EmulatorReader(emulator.url, emulator.api_key).wait_warm(300)
    h = auth(emulator)
    api = emulator.url + "/api/v1"
    r = requests.post(
        api + "/jobs",
        json={
            "program_id": "sampler",
            "backend": "fake_fez",
            "tags": ["raw"],
            "cost": 60,
            "params": sampler_params(isa_circuit()),
        },
        headers=h,
        timeout=30,
    )
    job_id = r.json()["id"]
    first = requests.get(f"{api}/jobs/{job_id}", headers=h, timeout=10).json()
    assert first["state"]["status"] in ("Queued", "Running")  # never done instantly
    assert first["program"]["id"] == "sampler" and first["cost"] == 60
    assert "params" in first
    deadline = time.time() + 60
    while time.time() < deadline:
        doc = requests.get(f"{api}/jobs/{job_id}?exclude_params=true", headers=h, timeout=10).json()
        if doc["status"] == "Completed":
            break
        time.sleep(0.2)
    assert doc["status"] == "Completed" and "params" not in doc
    res = requests.get(f"{api}/jobs/{job_id}/results", headers=h, timeout=10)
    assert res.status_code == 200 and "PrimitiveResult" in res.text
    metrics = requests.get(f"{api}/jobs/{job_id}/metrics", headers=h, timeout=10).json()
    assert metrics["usage"]["quantum_seconds"] > 0 and metrics["usage"]["seconds"] > 0
    assert metrics["timestamps"]["finished"] >= metrics["timestamps"]["running"]
    logs = requests.get(f"{api}/jobs/{job_id}/logs", headers=h, timeout=10)
    assert "completed" in logs.text
    assert_api_error(requests.post(f"{api}/jobs/{job_id}/cancel", headers=h, timeout=10), 409)
    tags = requests.put(
        f"{api}/jobs/{job_id}/tags", json={"tags": ["a", "b"]}, headers=h, timeout=10
    )
    assert tags.status_code == 204
    usage = requests.get(api + "/instances/usage", headers=h, timeout=10).json()
    assert usage["usage_consumed_seconds"] >= 0 and usage["usage_limit_reached"] is False
    workloads = requests.get(api + "/workloads", headers=h, timeout=10).json()
    assert any(w["id"] == job_id for w in workloads["workloads"])
    assert requests.delete(f"{api}/jobs/{job_id}", headers=h, timeout=10).status_code == 204
    assert_api_error(requests.get(f"{api}/jobs/{job_id}", headers=h, timeout=10), 404)


def test_sessions_raw(emulator) -> None:  # type: ignore[no-untyped-def]
    h = auth(emulator)
    api = emulator.url + "/api/v1"
    sess = requests.post(
        api + "/sessions", json={"backend": "fake_torino", "mode": "batch"}, headers=h, timeout=10
    ).json()
    sid = sess["id"]
    doc = requests.get(f"{api}/sessions/{sid}", headers=h, timeout=10).json()
    assert doc["mode"] == "batch" and doc["accepting_jobs"] is True
    assert (
        requests.patch(
            f"{api}/sessions/{sid}", json={"accepting_jobs": False}, headers=h, timeout=10
        ).status_code
        == 204
    )
    closed = requests.post(
        api + "/jobs",
        json={
            "program_id": "sampler",
            "backend": "fake_torino",
            "session_id": sid,
            "params": sampler_params(isa_circuit()),
        },
        headers=h,
        timeout=30,
    )
    assert_api_error(closed, 400)
    assert requests.delete(f"{api}/sessions/{sid}/close", headers=h, timeout=10).status_code == 204
    assert requests.get(f"{api}/sessions/{sid}", headers=h, timeout=10).json()["state"] == "closed"
    assert_api_error(requests.get(f"{api}/sessions/nope", headers=h, timeout=10), 404)
    assert_api_error(
        requests.post(
            api + "/sessions", json={"backend": "fake_fez", "mode": "weird"}, headers=h, timeout=10
        ),
        400,
    )


def test_reader_sees_execution_spans(emulator) -> None:  # type: ignore[no-untyped-def]
    """qproxy.emulator.reader (what the Slurm tests and benchmarks use to look at the device
    side): a finished job shows up with its tags and an execution span inside the window."""
    from qproxy.emulator.reader import EmulatorReader, parse_time

    reader = EmulatorReader(emulator.url, emulator.api_key)
    t0 = time.time()
    h = auth(emulator)
    tag = f"reader-{time.time_ns()}"
    job_id = requests.post(emulator.url + "/api/v1/jobs", json={
        "program_id": "sampler", "backend": "fake_torino", "tags": [tag],
        "params": sampler_params(isa_circuit())}, headers=h, timeout=30).json()["id"]
    assert any(j["id"] == job_id for j in reader.jobs_since(t0 - 1, pending=True))
    deadline = time.time() + 60
    while time.time() < deadline and reader.get(f"/jobs/{job_id}")["status"] != "Completed":
        time.sleep(0.1)
    spans = [s for s in reader.spans(t0 - 1, time.time() + 1, "fake_torino") if tag in s[2]]
    assert len(spans) == 1
    start, end, _ = spans[0]
    ts = reader.get(f"/jobs/{job_id}/metrics")["timestamps"]
    assert start == parse_time(ts["running"]) and end == parse_time(ts["finished"]) > start
    assert not any(j["id"] == job_id for j in reader.jobs_since(t0 - 1, pending=True))
    with pytest.raises(ValueError):
        parse_time("yesterday")


def _submit(emulator, h, **body) -> str:  # type: ignore[no-untyped-def]
    body.setdefault("program_id", "sampler")
    body.setdefault("backend", "fake_fez")
    body.setdefault("params", sampler_params(isa_circuit()))
    r = requests.post(emulator.url + "/api/v1/jobs", json=body, headers=h, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _wait_final(emulator, h, job_id: str, seconds: float = 300) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.time() + seconds
    while time.time() < deadline:
        doc = requests.get(f"{emulator.url}/api/v1/jobs/{job_id}", headers=h, timeout=10).json()
        if doc["status"] in ("Completed", "Failed", "Cancelled"):
            return dict(doc)
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not final after {seconds} s")


def test_backend_list_and_calibration_id(emulator) -> None:  # type: ignore[no-untyped-def]
    """``physical_qubits`` is in the backend list (the client reads IBMBackend.physical_qubits
    from it); a calibration id other than the device's is a 404 (documents) or 400 (jobs)."""
    from qproxy.emulator.backends import Device

    h = auth(emulator)
    api = emulator.url + "/api/v1"
    devices = requests.get(api + "/backends", headers=h, timeout=10).json()["devices"]
    assert {d["name"]: d["physical_qubits"] for d in devices} == {
        "fake_fez": 156, "fake_torino": 133}  # fmt: skip
    current = Device("fake_torino", "fake_torino").calibration_id
    for doc in ("configuration", "properties"):
        url = f"{api}/backends/fake_torino/{doc}"
        ok = requests.get(url, params={"calibration_id": current}, headers=h, timeout=10)
        assert ok.status_code == 200 and ok.json()["backend_name"] == "fake_torino"
        assert_api_error(
            requests.get(url, params={"calibration_id": "invalid_id"}, headers=h, timeout=10),
            404,
        )
    bad = requests.post(api + "/jobs", headers=h, timeout=30, json={
        "program_id": "sampler", "backend": "fake_torino", "calibration_id": "invalid_id",
        "params": sampler_params(isa_circuit())})  # fmt: skip
    assert_api_error(bad, 400)


def test_private_job_keeps_no_params_and_serves_its_result_once(emulator) -> None:  # type: ignore[no-untyped-def]
    from qproxy.emulator.reader import EmulatorReader

    assert EmulatorReader(emulator.url, emulator.api_key).wait_warm(300)
    h = auth(emulator)
    job_id = _submit(emulator, h, private=True)
    doc = _wait_final(emulator, h, job_id)
    assert doc["status"] == "Completed" and doc["private"] is True and "params" not in doc
    url = f"{emulator.url}/api/v1/jobs/{job_id}/results"
    first = requests.get(url, headers=h, timeout=10)
    assert first.status_code == 200 and "PrimitiveResult" in first.text
    second = requests.get(url, headers=h, timeout=10)
    assert second.status_code == 200 and second.text == ""


def test_qpu_time_keeps_a_job_running_for_its_shots(start_emulator) -> None:  # type: ignore[no-untyped-def]
    """With --qpu-time a 4096-shot job on a 250 µs-rep-delay device runs >= 1.02 s; a job
    that asks for a 10 µs rep_delay is held only the minimum."""
    from qproxy.emulator.reader import EmulatorReader

    emu = start_emulator(backends="fake_manila_v2", lanes="1", extra_args=["--qpu-time"])
    assert EmulatorReader(emu.url, emu.api_key).wait_warm(300)
    h = auth(emu)
    slow = _submit(emu, h, backend="fake_manila_v2", params=sampler_params(isa_circuit(), 4096))
    fast_params = sampler_params(isa_circuit(), 4096)
    fast_params["options"] = {"execution": {"rep_delay": 1e-5}}
    fast = _submit(emu, h, backend="fake_manila_v2", params=fast_params)
    held = {}
    for job_id in (slow, fast):
        _wait_final(emu, h, job_id)
        m = requests.get(f"{emu.url}/api/v1/jobs/{job_id}/metrics", headers=h, timeout=10)
        held[job_id] = m.json()["usage"]["quantum_seconds"]
    assert held[slow] >= 4096 * 250e-6
    assert held[fast] < 4096 * 250e-6
