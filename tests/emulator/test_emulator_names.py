"""Any device model under any name: ``--backends NAME=MODEL`` with the unmodified client.

The emulator serves fake_fez as ``ibm_fez`` and fake_sherbrooke as ``test_eagle_us-east``;
every document carries the served name, ``--lanes`` takes served names, and the client's own
name comparisons (``backends(name=...)`` filters on ``configuration().backend_name``; jobs,
sessions and ``least_busy`` look backends up by name) all hold.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import requests
from qiskit import QuantumCircuit
from qiskit.transpiler.preset_passmanagers import generate_preset_pass_manager

from qproxy.emulator.backends import parse_backends, parse_lanes
from qproxy.emulator.reader import EmulatorReader
from tests.support.emulator import api_headers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SERVED = {"ibm_fez": 156, "test_eagle_us-east": 127}
BACKENDS = "ibm_fez=fake_fez,test_eagle_us-east=fake_sherbrooke"


@pytest.fixture(scope="module")
def renamed(start_emulator):  # type: ignore[no-untyped-def]
    emu = start_emulator(backends=BACKENDS, lanes="ibm_fez=1,test_eagle_us-east=1")
    assert EmulatorReader(emu.url, emu.api_key).wait_warm(300)
    return emu


@pytest.fixture
def renamed_service(renamed, client_env_for):  # type: ignore[no-untyped-def]
    from qiskit_ibm_runtime import QiskitRuntimeService

    client_env_for(renamed)
    return QiskitRuntimeService()


def test_parse_served_names() -> None:
    assert parse_backends("test_eagle_us-east=fake_sherbrooke, fake_fez,ibm_fez=fake_fez") == [
        ("test_eagle_us-east", "fake_sherbrooke"),
        ("fake_fez", "fake_fez"),
        ("ibm_fez", "fake_fez"),
    ]
    for bad in ("a/b=fake_fez", "=fake_fez", "ibm_fez=", "x=fake_fez,x=fake_torino", " , "):
        with pytest.raises(ValueError):
            parse_backends(bad)
    assert parse_lanes("ibm_fez=2", ["ibm_fez", "fake_torino"]) == {"ibm_fez": 2, "fake_torino": 1}
    with pytest.raises(ValueError, match="served name"):
        parse_lanes("fake_fez=2", ["ibm_fez"])


def test_lanes_must_use_served_names() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qproxy", "emulator", "--backends", "ibm_fez=fake_fez",
         "--lanes", "fake_fez=2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "served name" in proc.stderr


def test_documents_carry_the_served_name(renamed) -> None:  # type: ignore[no-untyped-def]
    h = api_headers(renamed)
    api = renamed.url + "/api/v1"
    devices = requests.get(api + "/backends", headers=h, timeout=10).json()["devices"]
    assert {d["name"]: d["qubits"] for d in devices} == SERVED
    for name, qubits in SERVED.items():
        conf = requests.get(f"{api}/backends/{name}/configuration", headers=h, timeout=10).json()
        props = requests.get(f"{api}/backends/{name}/properties", headers=h, timeout=10).json()
        status = requests.get(f"{api}/backends/{name}/status", headers=h, timeout=10).json()
        assert conf["backend_name"] == props["backend_name"] == status["backend_name"] == name
        assert conf["n_qubits"] == qubits == len(props["qubits"])
    for model in ("fake_fez", "fake_sherbrooke"):  # the model is not served by its own name
        r = requests.get(f"{api}/backends/{model}/status", headers=h, timeout=10)
        assert r.status_code == 404


def test_client_backend_and_sampler_on_ibm_fez(renamed_service) -> None:  # type: ignore[no-untyped-def]
    from qiskit_ibm_runtime import SamplerV2, Session

    assert {b.name for b in renamed_service.backends()} == set(SERVED)
    fez = renamed_service.backend("ibm_fez")
    assert fez.name == "ibm_fez" and fez.num_qubits == 156
    assert fez.configuration().backend_name == "ibm_fez"
    assert fez.status().backend_name == "ibm_fez" and fez.status().operational
    assert fez.properties().backend_name == "ibm_fez"
    eagle = renamed_service.backend("test_eagle_us-east")
    assert "ecr" in eagle.target.operation_names  # the Eagle model's ISA, under the new name
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    isa = generate_preset_pass_manager(optimization_level=1, backend=fez, seed_transpiler=3).run(qc)
    job = SamplerV2(mode=fez).run([isa], shots=400)
    counts = job.result()[0].data.meas.get_counts()
    assert counts.get("00", 0) + counts.get("11", 0) > 0.85 * 400
    assert job.backend().name == "ibm_fez"
    again = renamed_service.job(job.job_id())
    assert again.backend().name == "ibm_fez" and again.status() == "DONE"
    assert [j.job_id() for j in renamed_service.jobs(backend_name="ibm_fez", limit=1)] == [
        job.job_id()
    ]
    with Session(backend=fez) as session:
        SamplerV2(mode=session).run([isa], shots=50).result()
        assert session.details()["backend_name"] == "ibm_fez"


def test_least_busy_follows_the_queues(renamed, renamed_service) -> None:  # type: ignore[no-untyped-def]
    """``least_busy()`` reads ``status.name`` and ``queue_length`` of ``GET /backends``: with
    a job running and one queued on the one-lane Eagle, it is ibm_fez; then both go."""
    from qiskit_ibm_runtime import SamplerV2

    assert renamed_service.least_busy(min_num_qubits=150).name == "ibm_fez"
    eagle = renamed_service.backend("test_eagle_us-east")
    qc = QuantumCircuit(12)  # a long job: a 12-qubit GHZ state, state-vector trajectories
    qc.h(0)
    for i in range(11):
        qc.cx(i, i + 1)
    qc.measure_all()
    pm = generate_preset_pass_manager(optimization_level=1, backend=eagle, seed_transpiler=3)
    isa = pm.run(qc)
    jobs = [SamplerV2(mode=eagle).run([isa], shots=20_000) for _ in range(2)]
    try:
        deadline = time.monotonic() + 60
        while jobs[0].status() != "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert eagle.status().pending_jobs == 1
        assert renamed_service.least_busy().name == "ibm_fez"
    finally:
        for job in jobs:
            job.cancel()
    assert all(job.status() == "CANCELLED" for job in jobs)
