"""A small VQE that runs in either integration mode by changing ONE line (QPU_MODE below).

- "gres":  the stock qiskit-ibm-runtime EstimatorV2 on QiskitRuntimeService(), inside a job
           that holds a QPU lane for its whole run (job-gres.sh: --gres=qpu:1 --q_backend).
- "slurm": SlurmEstimator: the program runs on a classical node without a lane and every
           estimator call becomes its own short Slurm job (job-slurm.sh), so the lane is
           free for others while this program does its classical work.

Minimises <H> for H = ZZ + 0.5 (XI + IX) over a 2-qubit hardware-efficient ansatz with a
simple random-search optimiser; each iteration evaluates a batch of candidate parameters in
one estimator call. Prints the best energy and the exact ground-state energy.
"""

import os
import time

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import ParameterVector
from qiskit.quantum_info import SparsePauliOp

QPU_MODE = os.environ.get("QPU_MODE", "slurm")  # <- the one line: "gres" or "slurm"
BACKEND = os.environ.get("QPU_BACKEND", "ibm_fez")
ITERATIONS = int(os.environ.get("VQE_ITERATIONS", "6"))
CLASSICAL_SECONDS = float(os.environ.get("VQE_CLASSICAL_SECONDS", "0"))  # stand-in work

theta = ParameterVector("t", 4)
ansatz = QuantumCircuit(2)
ansatz.ry(theta[0], 0)
ansatz.ry(theta[1], 1)
ansatz.cx(0, 1)
ansatz.ry(theta[2], 0)
ansatz.ry(theta[3], 1)
hamiltonian = SparsePauliOp.from_list([("ZZ", 1.0), ("XI", 0.5), ("IX", 0.5)])

if QPU_MODE == "slurm":
    from qproxy.client.slurm_mode import SlurmEstimator

    # qrun transpiles on the QPU side, so abstract circuits are fine here
    estimator = SlurmEstimator(BACKEND, default_precision=0.02)
    circuit, observable = ansatz, hamiltonian
else:
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_ibm_runtime import EstimatorV2, QiskitRuntimeService

    backend = QiskitRuntimeService().backend(BACKEND)
    circuit = generate_preset_pass_manager(optimization_level=1, backend=backend).run(ansatz)
    observable = hamiltonian.apply_layout(circuit.layout)
    estimator = EstimatorV2(mode=backend)
    estimator.options.default_precision = 0.02

rng = np.random.default_rng(7)
best = rng.uniform(-np.pi, np.pi, 4)
best_energy = np.inf
step = 1.0
t0 = time.monotonic()
for iteration in range(ITERATIONS):
    candidates = np.vstack([best, best + step * rng.normal(size=(15, 4))])
    time.sleep(CLASSICAL_SECONDS)  # the classical phase of a real hybrid program
    job = estimator.run([(circuit, observable, candidates)])
    energies = job.result()[0].data.evs
    i = int(np.argmin(energies))
    if energies[i] < best_energy:
        best, best_energy = candidates[i], float(energies[i])
    step *= 0.75
    print(f"iteration {iteration}: job {job.job_id()} best <H> = {best_energy:.3f}", flush=True)

exact = float(np.linalg.eigvalsh(hamiltonian.to_matrix()).min())
print(f"mode {QPU_MODE}: VQE energy {best_energy:.3f} (exact ground state {exact:.3f}) "
      f"in {time.monotonic() - t0:.1f}s")
