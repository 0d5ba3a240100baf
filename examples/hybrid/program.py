"""A small VQE loop written for IBM Quantum with the stock qiskit-ibm-runtime client, run
unmodified under Slurm: `QiskitRuntimeService()` takes everything from the environment the
SPANK plugin set (the job's proxy URL and per-job token). Minimises <H> for
H = ZZ + 0.5 (XI + IX) over a 2-qubit hardware-efficient ansatz, one Estimator job per
iteration evaluating a batch of candidate parameters (a simple random-search optimiser)."""

import os

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import ParameterVector
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import EstimatorV2 as Estimator
from qiskit_ibm_runtime import QiskitRuntimeService

service = QiskitRuntimeService()
backend = service.backend(os.environ.get("QPU_BACKEND", "ibm_fez"))

theta = ParameterVector("t", 4)
ansatz = QuantumCircuit(2)
ansatz.ry(theta[0], 0)
ansatz.ry(theta[1], 1)
ansatz.cx(0, 1)
ansatz.ry(theta[2], 0)
ansatz.ry(theta[3], 1)
hamiltonian = SparsePauliOp.from_list([("ZZ", 1.0), ("XI", 0.5), ("IX", 0.5)])

isa = generate_preset_pass_manager(optimization_level=1, backend=backend).run(ansatz)
observable = hamiltonian.apply_layout(isa.layout)
estimator = Estimator(mode=backend)
estimator.options.default_precision = 0.02

rng = np.random.default_rng(7)
best = rng.uniform(-np.pi, np.pi, 4)
best_energy = np.inf
step = 1.0
for iteration in range(8):
    candidates = np.vstack([best, best + step * rng.normal(size=(15, 4))])
    job = estimator.run([(isa, observable, candidates)])
    energies = job.result()[0].data.evs
    i = int(np.argmin(energies))
    if energies[i] < best_energy:
        best, best_energy = candidates[i], float(energies[i])
    step *= 0.75
    print(f"iteration {iteration}: job {job.job_id()} best <H> = {best_energy:.3f}")

exact = float(np.linalg.eigvalsh(hamiltonian.to_matrix()).min())
print(f"VQE energy {best_energy:.3f} (exact ground state {exact:.3f})")
