"""The seed design's hybrid program, as written there: ``from qiskit_slurm_provider import
Sampler``, ``Sampler()`` with no arguments, ``sampler.run([isa_circuit], ...).result()`` in
a loop with classical work around it.

The same file runs in both places a centre's users run it:
- in a QPU job (job.sh: --gres=qpu:1 --q_backend=ibm_fez): SamplerV2/EstimatorV2 on the
  job's proxy and backend;
- without a QPU (job-noqpu.sh, or a login node with QPU_BACKEND=ibm_fez): every run() is
  its own short Slurm job holding one lane.
"""

import json
import os
import time

from qiskit import QuantumCircuit
from qiskit.quantum_info import SparsePauliOp

from qiskit_slurm_provider import Estimator, Sampler

ROUNDS = int(os.environ.get("HYBRID_ROUNDS", "2"))

bell = QuantumCircuit(2)
bell.h(0)
bell.cx(0, 1)
measured = bell.measure_all(inplace=False)

sampler = Sampler()
print(f"{sampler!r}", flush=True)
isa_circuit = sampler.pass_manager().run(measured)  # the device's ISA (or the job's own)

t0 = time.monotonic()
counts: dict[str, int] = {}
for round_ in range(ROUNDS):
    # do_classical(): here, just deciding the shots for this round
    shots = 500 * (round_ + 1)
    result = sampler.run([isa_circuit], shots=shots).result()
    got = result[0].data.meas.get_counts()
    for k, v in got.items():
        counts[k] = counts.get(k, 0) + v
    same = (got.get("00", 0) + got.get("11", 0)) / shots
    print(f"round {round_}: {shots} shots, P(00 or 11) = {same:.3f}", flush=True)

estimator = Estimator()
isa = estimator.pass_manager().run(bell)
zz = SparsePauliOp("ZZ").apply_layout(isa.layout)
evs = estimator.run([(isa, zz)], precision=0.02).result()[0].data.evs
print(f"<ZZ> = {float(evs):.3f}")
print("summary: " + json.dumps({"mode": sampler.mode, "backend": sampler.backend_name,
                                "counts": counts, "zz": round(float(evs), 4),
                                "seconds": round(time.monotonic() - t0, 1)}))
