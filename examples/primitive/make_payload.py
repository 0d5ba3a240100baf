"""Classical side of the primitive example: write two qrun payloads (a Bell-state sample
and a <ZZ> estimate) with qproxy.client.payload.write_payload."""

from qiskit import QuantumCircuit
from qiskit.quantum_info import SparsePauliOp

from qproxy.client.payload import write_payload

bell = QuantumCircuit(2)
bell.h(0)
bell.cx(0, 1)
measured = bell.copy()
measured.measure_all()

write_payload("sample.json", [(measured,)], "sample", shots=1000)
write_payload("estimate.json", [(bell, [SparsePauliOp("ZZ"), SparsePauliOp("XX")])], "estimate",
              precision=0.05)
print("wrote sample.json and estimate.json")
