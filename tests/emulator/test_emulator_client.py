"""The unmodified qiskit-ibm-runtime client, configured only via the environment, against a
real emulator process: primitives of both generations, sessions, batches, jobs and errors."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

import numpy as np
import pytest
import requests
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp, Statevector
from qiskit.transpiler.preset_passmanagers import generate_preset_pass_manager

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SHOTS = 1000


@pytest.fixture
def fez(service):  # type: ignore[no-untyped-def]
    return service.backend("fake_fez")


@pytest.fixture
def pm(fez):  # type: ignore[no-untyped-def]
    return generate_preset_pass_manager(optimization_level=1, backend=fez, seed_transpiler=7)


def bell() -> QuantumCircuit:
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return qc


def ansatz() -> tuple[QuantumCircuit, list[Parameter]]:
    a, b = Parameter("a"), Parameter("b")
    qc = QuantumCircuit(2)
    qc.ry(a, 0)
    qc.rx(b, 1)
    qc.cx(0, 1)
    return qc, [a, b]


def assert_bell_counts(counts: dict[str, int], shots: int) -> None:
    assert sum(counts.values()) == shots
    same = counts.get("00", 0) + counts.get("11", 0)
    # ideal 50/50 between 00 and 11: binomial sd ~ 16 at 1000 shots, allow 5 sd + noise
    assert abs(counts.get("00", 0) - counts.get("11", 0)) < 0.2 * shots
    assert same > 0.85 * shots
    # device noise is on: some 01/10 must appear
    assert shots - same > 0


def test_backends_listed_with_real_device_data(service) -> None:  # type: ignore[no-untyped-def]
    names = {b.name for b in service.backends()}
    assert names == {"fake_fez", "fake_torino"}
    fez = service.backend("fake_fez")
    assert fez.num_qubits == 156
    assert {"cz", "sx", "rz", "x", "measure"} <= set(fez.target.operation_names)
    assert fez.status().operational
    assert fez.properties().t1(0) > 0


def test_sampler_v2_bell(service, fez, pm) -> None:  # type: ignore[no-untyped-def]
    from qiskit_ibm_runtime import SamplerV2

    job = SamplerV2(mode=fez).run([pm.run(bell())], shots=SHOTS)
    result = job.result()
    assert job.status() == "DONE"
    assert_bell_counts(result[0].data.meas.get_counts(), SHOTS)
    assert "execution_spans" in result.metadata["execution"]
    metrics = job.metrics()
    assert metrics["usage"]["quantum_seconds"] > 0
    assert metrics["timestamps"]["running"] and metrics["timestamps"]["finished"]


def test_sampler_v2_parameter_sweep_shape(service, fez, pm) -> None:  # type: ignore[no-untyped-def]
    from qiskit_ibm_runtime import SamplerV2

    qc, _ = ansatz()
    qc.measure_all()
    isa = pm.run(qc)
    values = np.array([[0.0, 0.0], [np.pi, 0.0], [np.pi, np.pi]])
    result = SamplerV2(mode=fez).run([(isa, values, 200)]).result()
    bits = result[0].data.meas
    assert bits.shape == (3,) and bits.num_shots == 200
    # ry(pi) on q0 then cx: 11; then rx(pi) on q1 flips q1 back: 01
    assert bits[0].get_counts().get("00", 0) > 170
    assert bits[1].get_counts().get("11", 0) > 170
    assert bits[2].get_counts().get("01", 0) > 170


def test_estimator_v2_matches_statevector(service, fez, pm) -> None:  # type: ignore[no-untyped-def]
    from qiskit_ibm_runtime import EstimatorV2

    qc, params = ansatz()
    isa = pm.run(qc)
    observables = [
        SparsePauliOp("ZZ"),
        SparsePauliOp("XI"),
        SparsePauliOp.from_list([("IZ", 0.5), ("ZI", 0.5)]),
    ]
    values = np.array([[0.3, 0.1], [1.2, 0.7], [2.5, 2.0], [0.0, np.pi / 2]])
    obs_isa = [[o.apply_layout(isa.layout)] for o in observables]  # shape (3, 1)
    job = EstimatorV2(mode=fez).run([(isa, obs_isa, values)], precision=0.02)
    res = job.result()[0]
    assert res.data.evs.shape == (3, 4) and res.data.stds.shape == (3, 4)
    exact = np.array(
        [
            [
                Statevector(qc.assign_parameters(dict(zip(params, v, strict=True))))
                .expectation_value(o)
                .real
                for v in values
            ]
            for o in observables
        ]
    )
    # shot noise at precision 0.02 plus device noise: generous but meaningful tolerance
    assert np.max(np.abs(res.data.evs - exact)) < 0.12
    assert np.all(res.data.stds > 0) and np.all(res.data.stds < 0.05)


def test_estimator_v2_single_value_is_0d(service, fez, pm) -> None:  # type: ignore[no-untyped-def]
    from qiskit_ibm_runtime import EstimatorV2

    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    isa = pm.run(qc)
    res = EstimatorV2(mode=fez).run([(isa, SparsePauliOp("XX").apply_layout(isa.layout))]).result()
    assert res[0].data.evs.shape == ()
    assert 0.85 < float(res[0].data.evs) <= 1.0


def test_executor_sampler(service, fez, pm) -> None:  # type: ignore[no-untyped-def]
    from qiskit_ibm_runtime.executor_sampler import Sampler

    job = Sampler(mode=fez).run([pm.run(bell())], shots=SHOTS)
    result = job.result()
    assert job.primitive_id == "executor"
    assert_bell_counts(result[0].data.meas.get_counts(), SHOTS)


def test_executor_estimator(service, fez, pm) -> None:  # type: ignore[no-untyped-def]
    from qiskit_ibm_runtime.executor_estimator import Estimator

    qc, params = ansatz()
    isa = pm.run(qc)
    values = np.array([[0.4, 0.2], [1.5, 0.0]])
    observables = [SparsePauliOp("ZZ"), SparsePauliOp("ZI")]
    job = Estimator(mode=fez).run(
        [(isa, [[o.apply_layout(isa.layout)] for o in observables], values)]
    )
    res = job.result()[0]
    assert res.data.evs.shape == (2, 2)
    exact = np.array(
        [
            [
                Statevector(qc.assign_parameters(dict(zip(params, v, strict=True))))
                .expectation_value(o)
                .real
                for v in values
            ]
            for o in observables
        ]
    )
    assert np.max(np.abs(res.data.evs - exact)) < 0.2


def test_session_and_batch(service, fez, pm) -> None:  # type: ignore[no-untyped-def]
    from qiskit_ibm_runtime import Batch, SamplerV2, Session

    isa = pm.run(bell())
    with Session(backend=fez) as session:
        job = SamplerV2(mode=session).run([isa], shots=100)
        job.result()
        assert job.session_id == session.session_id
        details = session.details()
        assert details["mode"] == "dedicated" and details["backend_name"] == "fake_fez"
    assert session.details()["accepting_jobs"] is False
    with Batch(backend=fez) as batch:
        jobs = [SamplerV2(mode=batch).run([isa], shots=100) for _ in range(2)]
        for job in jobs:
            job.result()
        assert batch.details()["mode"] == "batch"
    listed = service.jobs(session_id=batch.session_id)
    assert {j.job_id() for j in listed} == {j.job_id() for j in jobs}


def test_cancel(service, fez, pm) -> None:  # type: ignore[no-untyped-def]
    from qiskit_ibm_runtime import SamplerV2
    from qiskit_ibm_runtime.exceptions import RuntimeInvalidStateError

    job = SamplerV2(mode=fez).run([pm.run(bell())], shots=100)
    job.cancel()
    assert job.status() == "CANCELLED"
    assert service.job(job.job_id()).status() == "CANCELLED"
    with pytest.raises(RuntimeInvalidStateError):
        job.result()
    with pytest.raises(RuntimeInvalidStateError):
        service.job(job.job_id()).cancel()  # final: 409


def test_jobs_filters(service, fez, pm) -> None:  # type: ignore[no-untyped-def]
    from qiskit_ibm_runtime import EstimatorV2, SamplerV2

    before = datetime.now() - timedelta(seconds=1)
    tag = f"filters-{time.time_ns()}"
    isa = pm.run(bell())
    s_jobs = [
        SamplerV2(mode=fez, options={"environment": {"job_tags": [tag]}}).run([isa], shots=50)
        for _ in range(3)
    ]
    torino = service.backend("fake_torino")
    qc = QuantumCircuit(1)
    qc.x(0)
    e_isa = generate_preset_pass_manager(optimization_level=1, backend=torino).run(qc)
    e_job = EstimatorV2(mode=torino, options={"environment": {"job_tags": [tag, "est"]}}).run(
        [(e_isa, SparsePauliOp("Z").apply_layout(e_isa.layout))]
    )
    for job in [*s_jobs, e_job]:
        job.wait_for_final_state()
    ids = lambda jobs: [j.job_id() for j in jobs]  # noqa: E731
    tagged = service.jobs(job_tags=[tag], limit=None)
    assert set(ids(tagged)) == set(ids(s_jobs)) | {e_job.job_id()}
    assert ids(service.jobs(job_tags=[tag, "est"])) == [e_job.job_id()]
    assert ids(service.jobs(job_tags=[tag], backend_name="fake_torino")) == [e_job.job_id()]
    assert set(ids(service.jobs(job_tags=[tag], program_id="sampler"))) == set(ids(s_jobs))
    newest_first = ids(service.jobs(job_tags=[tag], limit=None))
    oldest_first = ids(service.jobs(job_tags=[tag], limit=None, descending=False))
    assert newest_first == oldest_first[::-1]
    assert ids(service.jobs(job_tags=[tag], limit=2, skip=1)) == newest_first[1:3]
    assert service.jobs(job_tags=[tag], pending=True) == []
    assert len(service.jobs(job_tags=[tag], pending=False, limit=None)) == 4
    assert len(service.jobs(job_tags=[tag], created_after=before, limit=None)) == 4
    assert service.jobs(job_tags=[tag], created_before=before) == []
    # tags can be replaced
    s_jobs[0].update_tags(["renamed"])
    assert service.job(s_jobs[0].job_id()).tags == ["renamed"]


def test_non_isa_circuit_rejected(service, emulator) -> None:  # type: ignore[no-untyped-def]
    """The client refuses non-ISA circuits itself, so submit as a foreign client would."""
    from qiskit_ibm_runtime import RuntimeEncoder
    from qiskit_ibm_runtime.exceptions import RuntimeJobFailureError

    qc = bell()  # h and cx are not fake_fez basis gates
    params = json.loads(
        json.dumps(
            {"pubs": [(qc, None, 100)], "version": 2, "support_qiskit": True, "options": {}},
            cls=RuntimeEncoder,
        )
    )
    r = requests.post(
        emulator.url + "/api/v1/jobs",
        json={"program_id": "sampler", "backend": "fake_fez", "params": params},
        headers={"Authorization": f"apikey {emulator.api_key}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    job = service.job(r.json()["id"])
    with pytest.raises(RuntimeJobFailureError, match="not ISA"):
        job.result()
    assert job.status() == "ERROR"
    assert "1517" in job.error_message()


def test_wrong_api_key_refused(emulator, client_env_for, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """IAM refuses the key; the client's fallback (``Authorization: apikey``) gets a 401.

    (No further client calls: after a failed IAM exchange, ibm-cloud-sdk-core paces the next
    token request by ~60 s.)
    """
    from qiskit_ibm_runtime import QiskitRuntimeService

    client_env_for(emulator)
    monkeypatch.setenv("QISKIT_IBM_TOKEN", "not-the-key")
    with pytest.warns(UserWarning, match="Provided API key could not be found"):
        QiskitRuntimeService()  # the client logs the 401 on /backends as "Invalid instance"
    r = requests.get(
        emulator.url + "/experimental/api/v1/backends",
        headers={"Authorization": "apikey not-the-key"},
        timeout=10,
    )
    assert r.status_code == 401
    assert r.json()["errors"][0]["code"] == 401
