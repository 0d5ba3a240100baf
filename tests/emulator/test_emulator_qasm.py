"""OpenQASM 3 circuits in PUBs over raw REST, as IBM's QRMI client sends them.

The same ISA circuit goes once as QPY (the client's RuntimeEncoder) and once as
``qiskit.qasm3.dumps`` text; the results must agree (sampler: counts, estimator: expectation
values) within shot noise, QASM that does not parse is a 400 in the API's error shape, and a
QASM circuit that is not ISA fails the job like a QPY one (code 1517).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest
import requests
from qiskit import QuantumCircuit, qasm3
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp, Statevector
from qiskit.transpiler.preset_passmanagers import generate_preset_pass_manager

from tests.support.emulator import api_headers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
SHOTS = 2000


@pytest.fixture(scope="module")
def pm():  # type: ignore[no-untyped-def]
    from qiskit_ibm_runtime.fake_provider import FakeFez

    return generate_preset_pass_manager(optimization_level=1, backend=FakeFez(), seed_transpiler=5)


def encoded(doc: dict[str, Any]) -> dict[str, Any]:
    from qiskit_ibm_runtime import RuntimeEncoder

    return dict(json.loads(json.dumps(doc, cls=RuntimeEncoder)))


def run(emulator, program: str, params: dict[str, Any]) -> Any:  # type: ignore[no-untyped-def]
    """Submit as a non-Python client would, wait, return the decoded result."""
    from qiskit_ibm_runtime import RuntimeDecoder

    h, api = api_headers(emulator), emulator.url + "/api/v1"
    r = requests.post(api + "/jobs", json={"program_id": program, "backend": "fake_fez",
                                           "params": params}, headers=h, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + 120
    while (doc := requests.get(f"{api}/jobs/{job_id}", headers=h, timeout=10).json())[
        "status"
    ] in ("Queued", "Running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    text = requests.get(f"{api}/jobs/{job_id}/results", headers=h, timeout=10).text
    if doc["status"] != "Completed":
        return doc, text
    return json.loads(text, cls=RuntimeDecoder)


def bell() -> QuantumCircuit:
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return qc


def probabilities(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}


def test_sampler_qasm3_pub_matches_qpy(emulator, pm) -> None:  # type: ignore[no-untyped-def]
    isa = pm.run(bell())
    text = qasm3.dumps(isa)
    assert "$" in text  # physical qubits, as QRMI sends an ISA circuit
    qpy = run(emulator, "sampler", encoded(
        {"pubs": [(isa, None, SHOTS)], "version": 2, "support_qiskit": True, "options": {}}))
    raw = run(emulator, "sampler",
              {"pubs": [[text, [], SHOTS]], "version": 2, "support_qiskit": False})  # fmt: skip
    p_qpy = probabilities(qpy[0].data.meas.get_counts())
    p_qasm = probabilities(raw[0].data.meas.get_counts())
    assert sum(raw[0].data.meas.get_counts().values()) == SHOTS
    assert p_qasm.get("00", 0) + p_qasm.get("11", 0) > 0.85
    tvd = 0.5 * sum(abs(p_qpy.get(k, 0) - p_qasm.get(k, 0)) for k in set(p_qpy) | set(p_qasm))
    assert tvd < 0.06, (p_qpy, p_qasm)  # shot noise at 2000 shots: tvd ~ 0.02


def test_estimator_qasm3_pub_matches_qpy(emulator, pm) -> None:  # type: ignore[no-untyped-def]
    a, b = Parameter("a"), Parameter("b")
    qc = QuantumCircuit(2)
    qc.ry(a, 0)
    qc.rx(b, 1)
    qc.cx(0, 1)
    isa = pm.run(qc)
    values = [[0.3, 0.1], [1.2, 0.7], [2.5, 2.0]]
    observables = [SparsePauliOp("ZZ"), SparsePauliOp("XI"), SparsePauliOp("IZ")]
    laid_out = [o.apply_layout(isa.layout) for o in observables]
    # a non-Python client's observables: {label: coefficient} over the device's 156 qubits
    labels = [[{p.to_label(): float(c.real) for p, c in zip(o.paulis, o.coeffs, strict=True)}]
              for o in laid_out]  # fmt: skip
    options = {"default_precision": 0.02}
    qpy = run(emulator, "estimator", encoded(
        {"pubs": [(isa, [[o] for o in laid_out], values)], "version": 2,
         "support_qiskit": True, "options": options}))  # fmt: skip
    raw = run(emulator, "estimator", {"pubs": [[qasm3.dumps(isa), labels, values]],
                                      "version": 2, "options": options})  # fmt: skip
    exact = np.array([[Statevector(qc.assign_parameters(v)).expectation_value(o).real
                       for v in values] for o in observables])  # fmt: skip
    assert raw[0].data.evs.shape == qpy[0].data.evs.shape == (3, 3)
    assert np.max(np.abs(raw[0].data.evs - qpy[0].data.evs)) < 0.12  # 2 x (shot + noise)
    assert np.max(np.abs(raw[0].data.evs - exact)) < 0.12


def test_qasm3_that_does_not_parse_is_400(emulator) -> None:  # type: ignore[no-untyped-def]
    h, api = api_headers(emulator), emulator.url + "/api/v1"
    for bad in ("OPENQASM 3.0; qubit[1] q; nosuchgate q[0];", "OPENQASM 3.0; garbage ;;",
                "not qasm at all"):  # fmt: skip
        for program, pub in (("sampler", [bad, [], 10]), ("estimator", [bad, {"Z": 1.0}])):
            body = {"program_id": program, "backend": "fake_fez",
                    "params": {"pubs": [pub], "version": 2}}  # fmt: skip
            r = requests.post(api + "/jobs", json=body, headers=h, timeout=30)
            assert r.status_code == 400, r.text
            body = r.json()
            assert set(body["errors"][0]) >= {"code", "message", "more_info"} and "trace" in body
            assert "OpenQASM 3" in body["errors"][0]["message"]
            assert "pub 0" in body["errors"][0]["message"]


def test_qasm3_not_isa_fails_like_qpy(emulator) -> None:  # type: ignore[no-untyped-def]
    text = qasm3.dumps(bell())  # h and cx are not fake_fez gates
    doc, message = run(emulator, "sampler", {"pubs": [[text, None, 10]], "version": 2})
    assert doc["status"] == "Failed" and doc["state"]["reason_code"] == 1517
    assert "not ISA" in message
