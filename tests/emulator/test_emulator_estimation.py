"""Estimation on the whole device: only the qubits the circuit or observables touch are
simulated, split into independent groups whose expectation values multiply.

Checked twice: in-process against a small reference (the same pub simulated jointly as one
density matrix, which is what the emulator did for at most 24 qubits), and end to end with
the unmodified client's estimators on a circuit across all 156 qubits of fake_fez (which the
emulator used to refuse) against the exact values.
"""

from __future__ import annotations

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler.preset_passmanagers import generate_preset_pass_manager

from qproxy.emulator.backends import Device
from qproxy.emulator.estimate import estimate
from qproxy.emulator.simulate import _aer_options, _sub_circuit

pytestmark = [pytest.mark.timeout(600)]


def test_factorised_estimate_matches_joint_reference() -> None:
    """Groups {0,1} and {2,3} (cx), {5} (single-qubit gates) and qubit 8 (observed, never
    touched) on fake_guadalupe_v2; Pauli terms across groups; two parameter sets."""
    device = Device("g", "fake_guadalupe_v2")
    a, b = Parameter("a"), Parameter("b")
    qc = QuantumCircuit(16)
    for q, angle in ((0, a), (2, b), (5, a)):
        qc.sx(q)
        qc.rz(angle, q)
        qc.sx(q)
    qc.cx(0, 1)
    qc.cx(2, 3)
    qc.rz(0.4, 3)
    qc.sx(3)
    terms = ["Z0 Z2", "X0 X1 Z3", "Y1 Z5", "Z1 Y3 X5", "X8", "Z8 Z0", "Z5"]
    observables = [
        SparsePauliOp.from_sparse_list([(t.replace(" ", "")[::2], [int(x[1:]) for x in
                                         t.split()], 1.0)], 16)  # fmt: skip
        for t in terms
    ]
    observables.append(SparsePauliOp.from_list([("I" * 16, 0.5)]) + observables[0])
    values = np.array([[0.3, 1.1], [2.0, -0.7]])
    evs, stds, meta = estimate(
        device, qc, [[o] for o in observables], values, precision=0.001, seed=3
    )
    assert evs.shape == stds.shape == (len(observables), 2) and meta["shots"] == 1_000_000

    # reference: all six qubits in one density matrix with their noise, no factorisation
    from qiskit_aer.primitives import EstimatorV2 as AerEstimatorV2

    qubits = [0, 1, 2, 3, 5, 8]
    sub, _ = _sub_circuit(qc, qubits)
    noise = device.noise_model_for(tuple(qubits), readout=False)
    ref = AerEstimatorV2(options=_aer_options(noise, qubits, 1))
    small = [SparsePauliOp.from_sparse_list(
        [(p, [qubits.index(q) for q in idx], c) for p, idx, c in o.to_sparse_list()], 6)
        for o in observables]  # fmt: skip
    exact = ref.run([(sub, [[o] for o in small], values)]).result()[0].data.evs
    assert np.max(np.abs(evs - exact)) < 0.006, (evs, exact)  # shot noise: std <= 0.001
    assert abs(exact[4]).max() < 1e-9 and np.allclose(evs[4], 0, atol=0.006)  # X on |0>
    assert np.all(stds < 0.0015)


def ry_layer(n: int, pairs: list[tuple[int, int]]) -> tuple[QuantumCircuit, np.ndarray]:
    """ry(theta_q) on every qubit, then cz on ``pairs`` (coupling-map edges)."""
    thetas = np.linspace(0.2, 2.9, n)
    qc = QuantumCircuit(n)
    for q, t in enumerate(thetas):
        qc.ry(float(t), q)
    for x, y in pairs:
        qc.cz(x, y)
    return qc, thetas


@pytest.mark.slow
@pytest.mark.parametrize("generation", ["EstimatorV2", "executor Estimator"])
def test_client_estimates_across_all_156_qubits(service, generation) -> None:  # type: ignore[no-untyped-def]
    from qiskit_ibm_runtime import EstimatorV2
    from qiskit_ibm_runtime.executor_estimator import Estimator

    fez = service.backend("fake_fez")
    n = fez.num_qubits
    pairs = [(0, 1), (2, 3), (3, 16)]
    qc, thetas = ry_layer(n, pairs)
    pm = generate_preset_pass_manager(
        optimization_level=0, backend=fez, initial_layout=list(range(n)), seed_transpiler=1
    )
    isa = pm.run(qc)
    mean_z = SparsePauliOp.from_sparse_list([("Z", [q], 1.0 / n) for q in range(n)], n)
    x_z = SparsePauliOp.from_sparse_list([("XZ", [0, 1], 1.0)], n)  # cz: X0 Z1 -> X0
    zz_far = SparsePauliOp.from_sparse_list([("ZZ", [40, 150], 1.0)], n)
    observables = [mean_z, x_z, zz_far]
    exact = np.array([np.mean(np.cos(thetas)), np.sin(thetas[0]),
                      np.cos(thetas[40]) * np.cos(thetas[150])])  # fmt: skip
    laid = [[o.apply_layout(isa.layout)] for o in observables]
    if generation == "EstimatorV2":
        job = EstimatorV2(mode=fez).run([(isa, laid)], precision=0.02)
    else:
        job = Estimator(mode=fez).run([(isa, laid)], precision=0.05)
    res = job.result()[0]
    assert res.data.evs.shape == (3, 1)
    # device noise (gate errors, relaxation) plus shot noise at the precision asked for
    assert np.max(np.abs(res.data.evs[:, 0] - exact)) < 0.15, (res.data.evs[:, 0], exact)


def test_twirling_randomizations_set_the_estimator_shots(service) -> None:  # type: ignore[no-untyped-def]
    """num_randomizations x shots_per_randomization take precedence over default_shots (the
    client's TwirlingOptions say so; the client's own integration suite checks 16 x 100)."""
    from qiskit_ibm_runtime import EstimatorV2

    torino = service.backend("fake_torino")
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    isa = generate_preset_pass_manager(optimization_level=1, backend=torino).run(qc)
    zz = SparsePauliOp("ZZ").apply_layout(isa.layout)
    estimator = EstimatorV2(mode=torino)
    estimator.options.default_shots = 400
    estimator.options.twirling.enable_gates = True
    estimator.options.twirling.num_randomizations = 16
    estimator.options.twirling.shots_per_randomization = 100
    meta = estimator.run([(isa, zz)]).result()[0].metadata
    assert meta["shots"] == 1600 and meta["num_randomizations"] == 16
    estimator = EstimatorV2(mode=torino)
    estimator.options.default_shots = 400
    assert estimator.run([(isa, zz)]).result()[0].metadata["shots"] == 400
