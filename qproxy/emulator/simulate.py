"""Noisy simulation of ISA circuits on one device, reduced to the qubits that matter.

Why reduction: circuits arrive in the device's ISA, laid out on up to 156 physical qubits; a
state vector of that size cannot exist, and even a 2-qubit circuit run against the full
156-qubit noise model costs seconds. So every circuit is cut down before Aer sees it:

1. qubits no instruction touches are dropped;
2. qubits that are only measured (or reset) are never simulated: they are in |0>, so their
   bits are drawn from the device's P(1|0) readout error (the newest client's estimator
   measures every device qubit this way);
3. without classical feed-forward, qubits split into independent groups (connected through
   multi-qubit gates or shared classical bits); groups are simulated separately, packed into
   bins of at most ``PACK_QUBITS``, and their bits combined shot by shot. Independent
   groups have independent outcomes under a local noise model, so this is exact in
   distribution.

Each bin runs on Aer's ``SamplerV2`` with the device noise model restricted to the bin's qubits
(see :meth:`Device.noise_model_for`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from qiskit.circuit import ClassicalRegister, ControlFlowOp, QuantumCircuit, Qubit

from .backends import Device

# small independent groups are packed together up to this many qubits per Aer run (measured
# on the newest estimator's 156-qubit twirled programs: 2-4 is fastest)
PACK_QUBITS = int(os.environ.get("QPROXY_EMULATOR_PACK_QUBITS", "4"))
# groups up to this size use a density matrix (one evolution per parameter set, shots sampled
# from it); larger ones noisy state-vector trajectories (one evolution per shot)
DM_MAX_QUBITS = 10
MAX_GROUP_QUBITS = 24
_PASSIVE = {"measure", "reset", "delay", "barrier"}


class JobFailure(Exception):
    """A job-level failure (job ends Failed with this message and reason code)."""

    def __init__(self, message: str, code: int = 1500) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def flatten_boxes(circuit: QuantumCircuit) -> QuantumCircuit:
    """Inline ``box`` instructions (the executor's annotated layers) into plain instructions.

    Boxes carry twirling/noise annotations the client's samplex already resolved; for the
    simulator they are just their bodies.
    """
    if not any(inst.operation.name == "box" for inst in circuit.data):
        return circuit
    out = circuit.copy_empty_like()
    for inst in circuit.data:
        if inst.operation.name == "box":
            body = flatten_boxes(inst.operation.blocks[0])
            out.compose(body, qubits=inst.qubits, clbits=inst.clbits, inplace=True)
        else:
            out.append(inst)
    return out


def check_isa(circuit: QuantumCircuit, device: Device) -> None:
    """Refuse circuits that are not ISA for the device, as IBM's service does (code 1517)."""
    from qiskit_ibm_runtime.utils.utils import is_isa_circuit

    message = is_isa_circuit(circuit, device.target)
    if message:
        raise JobFailure(
            f"The circuit is not ISA for backend {device.name}: {message} "
            "Transpile it for the backend first (generate_preset_pass_manager).",
            1517,
        )


@dataclass
class _Bin:
    qubits: list[int]  # device/circuit qubit indices, in bin order


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, x: Any) -> Any:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb


def _plan(circuit: QuantumCircuit, extra_qubits: set[int]) -> tuple[list[_Bin], dict[int, int]]:
    """Split the circuit's qubits into simulation bins and readout-only qubits.

    Returns the bins and ``{clbit index: qubit}`` for clbits that come from measuring a qubit
    that is only ever measured.
    """
    qindex = {q: i for i, q in enumerate(circuit.qubits)}
    cindex = {c: i for i, c in enumerate(circuit.clbits)}
    feed_forward = _has_feed_forward(circuit)
    active: set[int] = set(extra_qubits)
    passive_only: dict[int, bool] = {}
    for inst in circuit.data:
        name = inst.operation.name
        if name == "barrier":
            continue
        for q in inst.qubits:
            i = qindex[q]
            if name in _PASSIVE:
                passive_only.setdefault(i, True)
            else:
                passive_only[i] = False
                active.add(i)
    readout_only: dict[int, int] = {}
    uf = _UnionFind()
    for inst in circuit.data:
        name = inst.operation.name
        if name in ("barrier", "delay"):
            continue
        qs = [qindex[q] for q in inst.qubits]
        if name == "measure" and passive_only.get(qs[0], False) and qs[0] not in extra_qubits:
            readout_only[cindex[inst.clbits[0]]] = qs[0]
            continue
        if name == "reset" and passive_only.get(qs[0], False):
            continue
        nodes: list[Any] = [("q", i) for i in qs] + [("c", cindex[c]) for c in inst.clbits]
        for node in nodes[1:]:
            uf.union(nodes[0], node)
        for node in nodes:
            uf.find(node)
    for i in active:
        uf.find(("q", i))
    # a clbit written both by a readout-only qubit and by a simulated group: simulate that qubit
    for c in list(readout_only):
        if ("c", c) in uf.parent:
            uf.union(("c", c), ("q", readout_only.pop(c)))
    groups: dict[Any, list[int]] = {}
    for node in uf.parent:
        if node[0] == "q":
            groups.setdefault(uf.find(node), []).append(node[1])
    group_list = sorted((sorted(g) for g in groups.values()), key=len, reverse=True)
    if feed_forward and group_list:
        group_list = [sorted({q for g in group_list for q in g})]
    return [_Bin(b) for b in pack_groups(group_list)], readout_only


def pack_groups(groups: list[list[int]], limit: int = PACK_QUBITS) -> list[list[int]]:
    """Pack independent qubit groups (largest first) into simulation bins of at most
    ``limit`` qubits (a larger group is a bin of its own); refuse a group over
    ``MAX_GROUP_QUBITS``."""
    for g in groups:
        if len(g) > MAX_GROUP_QUBITS:
            raise JobFailure(
                f"The emulator cannot simulate {len(g)} mutually entangled qubits "
                f"(limit {MAX_GROUP_QUBITS}).",
                1500,
            )
    bins: list[list[int]] = []
    for g in sorted(groups, key=len, reverse=True):
        for b in bins:
            if len(b) + len(g) <= limit:
                b.extend(g)
                break
        else:
            bins.append(list(g))
    return bins


def _has_feed_forward(circuit: QuantumCircuit) -> bool:
    return any(
        isinstance(inst.operation, ControlFlowOp)
        or getattr(inst.operation, "_condition", None) is not None
        for inst in circuit.data
    )


def _sub_circuit(
    circuit: QuantumCircuit, qubits: list[int], compact: bool = False
) -> tuple[QuantumCircuit, list[int]]:
    """The instructions acting on ``qubits`` (renumbered in that order).

    With ``compact``, only the clbits those instructions write are kept, in one register
    ``c`` (sampling cost grows with the clbit count: 156 clbits made Aer 10x slower); the
    second value lists the original clbit index of each kept clbit. Without it (classical
    feed-forward needs the registers intact) all clbits and registers are kept.
    """
    pos = {q: i for i, q in enumerate(qubits)}
    qindex = {q: i for i, q in enumerate(circuit.qubits)}
    cindex = {c: i for i, c in enumerate(circuit.clbits)}
    new_qubits = [Qubit() for _ in qubits]
    kept = [
        inst for inst in circuit.data if inst.qubits and all(qindex[q] in pos for q in inst.qubits)
    ]
    if compact:
        used = sorted({cindex[c] for inst in kept for c in inst.clbits})
        creg = ClassicalRegister(len(used), "c")
        out = (
            QuantumCircuit(new_qubits, creg, name=circuit.name)
            if used
            else QuantumCircuit(new_qubits, name=circuit.name)
        )
        cmap = {circuit.clbits[i]: creg[k] for k, i in enumerate(used)}
    else:
        used = list(range(circuit.num_clbits))
        out = QuantumCircuit(new_qubits, *circuit.cregs, name=circuit.name)
        loose = [c for c in circuit.clbits if not circuit.find_bit(c).registers]
        if loose:
            out.add_bits(loose)
        cmap = {c: c for c in circuit.clbits}
    for inst in kept:
        out.append(
            inst.operation,
            [new_qubits[pos[qindex[q]]] for q in inst.qubits],
            [cmap[c] for c in inst.clbits],
        )
    return out, used


def _aer_options(noise: Any, qubits: list[int], seed: int) -> dict[str, Any]:
    """Aer primitive options: the device's noise on these qubits, one thread per lane worker
    (lanes are processes), density matrix up to ``DM_MAX_QUBITS``."""
    method = "density_matrix" if len(qubits) <= DM_MAX_QUBITS else "statevector"
    return {
        "backend_options": {"noise_model": noise, "method": method, "max_parallel_threads": 1},
        "run_options": {"seed_simulator": seed},
    }


def _aer_sampler(device: Device, qubits: list[int], seed: int) -> Any:
    """Aer sampler for one bin: density matrix for small bins (one noisy evolution per
    parameter set, then all shots are sampled from it), noisy state-vector trajectories
    (one per shot) beyond ``DM_MAX_QUBITS``."""
    from qiskit_aer.primitives import SamplerV2 as AerSamplerV2

    return AerSamplerV2(
        seed=seed, options=_aer_options(device.noise_model_for(tuple(qubits)), qubits, seed)
    )


def sample_circuit(
    device: Device,
    circuit: QuantumCircuit,
    values: np.ndarray | None,
    shots: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Sample a (flattened, ISA) circuit: ``{creg name: bool array shape + (shots, bits)}``.

    ``values`` holds the parameter values, shape ``S + (num_parameters,)`` in the order of
    ``circuit.parameters``; the results have the broadcast shape ``S``.
    """
    from qiskit.primitives.containers.bindings_array import BindingsArray
    from qiskit.primitives.containers.sampler_pub import SamplerPub

    nparams = circuit.num_parameters
    if values is None and nparams == 0:
        values = np.zeros((0,))
    if values is None:
        raise JobFailure("The circuit has parameters but no parameter values were given.", 1500)
    values = np.asarray(values, dtype=float)
    if nparams == 0:
        shape: tuple[int, ...] = values.shape[:-1] if values.ndim >= 1 else ()
    else:
        if values.shape[-1] != nparams:
            raise JobFailure(
                f"Got {values.shape[-1]} parameter values for {nparams} circuit parameters.", 1500
            )
        shape = values.shape[:-1]
    rng = np.random.default_rng(seed)
    n_sets = math.prod(shape)
    flat = np.zeros(shape + (shots, circuit.num_clbits), dtype=bool)
    compact = not _has_feed_forward(circuit)
    bins, readout_only = _plan(circuit, set())
    param_pos = {p.name: i for i, p in enumerate(circuit.parameters)}
    for b_i, b in enumerate(bins):
        sub, used = _sub_circuit(circuit, b.qubits, compact=compact)
        if not any(inst.operation.name == "measure" for inst in sub.data):
            continue
        sampler = _aer_sampler(device, b.qubits, seed + 7919 * b_i)
        if sub.num_parameters:
            cols = [param_pos[p.name] for p in sub.parameters]
            ba = BindingsArray({tuple(sub.parameters): values[..., cols]})
            pub = SamplerPub(circuit=sub, parameter_values=ba, shots=shots)
            data = sampler.run([pub]).result()[0].data
            reshape = False
        else:
            pub = SamplerPub(circuit=sub, shots=shots * max(n_sets, 1))
            data = sampler.run([pub]).result()[0].data
            reshape = True
        for creg in sub.cregs:
            arr = getattr(data, creg.name).to_bool_array(order="little")
            if reshape:
                arr = arr.reshape(shape + (shots, arr.shape[-1]))
            cols_out = [used[sub.find_bit(bit).index] for bit in creg]
            flat[..., cols_out] |= arr
    for c, q in readout_only.items():
        p = device.readout_p1_given_0(q)
        flat[..., c] = rng.random(shape + (shots,)) < p
    out: dict[str, np.ndarray] = {}
    for creg in circuit.cregs:
        idx = [circuit.find_bit(bit).index for bit in creg]
        out[creg.name] = flat[..., idx]
    return out
