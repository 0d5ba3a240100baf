"""OpenQASM 3 circuits in PUBs, as IBM's service accepts them.

IBM's QRMI client (and any non-Python client) sends each PUB's circuit as an OpenQASM 3
string instead of QPY. They are parsed with qiskit's own importer (``qiskit.qasm3.loads``,
backed by the ``qiskit_qasm3_import`` package) and then treated exactly like QPY circuits
(the same ISA check, the same simulation). Physical qubits (``$0``, ``$12``) become circuit
qubits of the same index, so an ISA circuit keeps its layout.

Gates outside ``stdgates.inc`` that the device has (``ecr``, ``rzz``, ...) arrive defined in
the program itself (qiskit's exporter writes ``gate ecr ... { ... }``), and the importer
makes them opaque custom gates; they are replaced by the standard gate of that name so the
ISA check and the noise model (both keyed by name) see the device's own gate.
"""

from __future__ import annotations

from typing import Any

from qiskit.circuit import Gate, QuantumCircuit

from .errors import ApiError


def load_qasm3(text: str, where: str) -> QuantumCircuit:
    """Parse an OpenQASM 3 PUB circuit; a 400 in the API's shape if it does not parse."""
    from qiskit import qasm3

    if not text.lstrip().startswith("OPENQASM"):
        raise ApiError(
            400, f"{where}: a circuit given as a string must be an OpenQASM 3 program "
            "starting with 'OPENQASM 3.0;'.", 1400,
        )  # fmt: skip
    try:
        circuit = qasm3.loads(text)
    except Exception as exc:  # noqa: BLE001 - any importer failure is the client's bad input
        detail = str(exc).strip() or type(exc).__name__
        raise ApiError(
            400, f"{where}: the OpenQASM 3 circuit could not be parsed: {detail}", 1400
        ) from None
    return _standard_gates(circuit)


def _standard_gates(circuit: QuantumCircuit) -> QuantumCircuit:
    from qiskit.circuit.library import get_standard_gate_name_mapping

    standard = get_standard_gate_name_mapping()
    if not any(_replaceable(inst.operation, standard) for inst in circuit.data):
        return circuit
    out = circuit.copy_empty_like()
    for inst in circuit.data:
        op = inst.operation
        if _replaceable(op, standard):
            op = standard[op.name].base_class(*op.params)
        out.append(op, inst.qubits, inst.clbits, copy=False)
    return out


def _replaceable(op: Any, standard: dict[str, Any]) -> bool:
    std = standard.get(op.name)
    return (
        type(op) is Gate  # an imported `gate name ... {}` definition, not a library class
        and std is not None
        and isinstance(std, Gate)
        and std.num_qubits == op.num_qubits
        and len(std.params) == len(op.params)
    )
