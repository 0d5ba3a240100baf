"""Classical preprocessing: build a GHZ-state circuit and write it as a qrun payload."""

import sys

from qiskit import QuantumCircuit

from qproxy.client.payload import write_payload

n = int(sys.argv[2]) if len(sys.argv) > 2 else 3
qc = QuantumCircuit(n)
qc.h(0)
for q in range(n - 1):
    qc.cx(q, q + 1)
qc.measure_all()
write_payload(sys.argv[1], [(qc,)], "sample", shots=2000)
print(f"preprocess: wrote {sys.argv[1]} ({n}-qubit GHZ, 2000 shots)")
