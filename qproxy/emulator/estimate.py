"""Estimator pubs on devices of any size: only the qubits that matter are simulated.

An ISA pub lives on the whole device (156 qubits on fake_fez): the observables are laid out
across it and the newest clients observe every qubit. Simulating the state the observables
see jointly cannot hold more than a few dozen qubits, so (as for the sampler, see
simulate.py) the pub is cut down first:

1. qubits no gate touches (only measured, reset or delayed, or not used at all) are in |0>:
   on them Z and I give 1, X and Y give 0, with no simulation (relaxation only decays
   towards |0>, and readout error is left out, see :func:`estimate`);
2. the other qubits split into independent groups (connected by multi-qubit gates; all one
   group with classical feed-forward). Under the device's local noise model the state is a
   product over the groups, so a Pauli term's expectation is the product of its parts' on
   each group; groups are packed into bins (``PACK_QUBITS``) and each bin is one Aer
   estimator run (density matrix up to ``DM_MAX_QUBITS``) with the noise restricted to it.

Only a group of more than ``MAX_GROUP_QUBITS`` mutually entangled qubits is refused.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from qiskit.circuit import QuantumCircuit

from .backends import Device
from .simulate import (
    JobFailure,
    _aer_options,
    _has_feed_forward,
    _sub_circuit,
    _UnionFind,
    pack_groups,
)

_IDLE = {"measure", "reset", "delay", "barrier"}  # leave a qubit in |0> (readout aside)


def _pauli_on(term: str, qubits: list[int]) -> str:
    """Restrict a little-endian Pauli label to ``qubits`` (in that order, qubits[0] last)."""
    n = len(term)
    return "".join(term[n - 1 - q] for q in reversed(qubits))


def _groups(circuit: QuantumCircuit) -> tuple[list[list[int]], set[int]]:
    """Independent groups of the qubits gates act on, and the set of those qubits."""
    qindex = {q: i for i, q in enumerate(circuit.qubits)}
    uf = _UnionFind()
    active: set[int] = set()
    for inst in circuit.data:
        if inst.operation.name in _IDLE:
            continue
        qs = [qindex[q] for q in inst.qubits]
        active.update(qs)
        for q in qs:
            uf.find(q)
        for q in qs[1:]:
            uf.union(qs[0], q)
    if _has_feed_forward(circuit):
        return ([sorted(active)] if active else []), active
    groups: dict[int, list[int]] = {}
    for q in sorted(active):
        groups.setdefault(uf.find(q), []).append(q)
    return sorted(groups.values(), key=len, reverse=True), active


def _idle_factor(label: str, active: set[int]) -> float:
    """The expectation of a term's part on the qubits no gate touches (all in |0>)."""
    n = len(label)
    for i, ch in enumerate(label):
        if ch in "XY" and (n - 1 - i) not in active:
            return 0.0
    return 1.0


def _bin_evs(
    device: Device,
    circuit: QuantumCircuit,
    qubits: list[int],
    labels: list[str],
    values: np.ndarray | None,
    n_sets: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Noise-exact expectation of each label (restricted to ``qubits``) per parameter set."""
    from qiskit.primitives.containers.bindings_array import BindingsArray
    from qiskit.primitives.containers.estimator_pub import EstimatorPub
    from qiskit.primitives.containers.observables_array import ObservablesArray
    from qiskit_aer.primitives import EstimatorV2 as AerEstimatorV2

    sub, _ = _sub_circuit(circuit, qubits, compact=True)
    sub.remove_final_measurements(inplace=True)
    noise = device.noise_model_for(tuple(qubits), readout=False)
    est = AerEstimatorV2(options=_aer_options(noise, qubits, seed))
    obs = ObservablesArray([[{u: 1.0}] for u in labels])
    if sub.num_parameters:
        assert values is not None
        pos = {p.name: i for i, p in enumerate(circuit.parameters)}
        cols = [pos[p.name] for p in sub.parameters]
        flat = values.reshape(n_sets, circuit.num_parameters)[:, cols]
        pub = EstimatorPub.coerce((sub, obs, BindingsArray({tuple(sub.parameters): flat})))
    else:
        pub = EstimatorPub.coerce((sub, obs))
    raw = np.asarray(est.run([pub]).result()[0].data.evs, dtype=float).reshape(len(labels), -1)
    return {u: np.broadcast_to(np.clip(raw[t], -1.0, 1.0), (n_sets,)) for t, u in
            enumerate(labels)}  # fmt: skip


def estimate(
    device: Device,
    circuit: QuantumCircuit,
    observables: Any,
    values: np.ndarray | None,
    precision: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Expectation values of a pub: ``(evs, stds, metadata)`` shaped like the pub.

    The noisy state is simulated exactly (density matrix, gate and relaxation noise; readout
    error left out because IBM's estimator mitigates it by default with TREX), then each Pauli
    term gets the shot noise of ``ceil(1/precision^2)`` shots, so ``stds`` are honest.
    """
    from qiskit.primitives.containers.observables_array import ObservablesArray

    obs = ObservablesArray.coerce(observables)
    nparams = circuit.num_parameters
    if nparams:
        if values is None:
            raise JobFailure("The circuit has parameters but no parameter values were given.")
        values = np.asarray(values, dtype=float)
        pshape: tuple[int, ...] = values.shape[:-1]
    else:
        values = None
        pshape = ()
    shape = np.broadcast_shapes(obs.shape, pshape)
    n_sets = math.prod(pshape)
    terms_per_obs = {idx: obs[idx] for idx in np.ndindex(obs.shape)}
    labels = sorted({lab for terms in terms_per_obs.values() for lab in terms if set(lab) - {"I"}})
    groups, active = _groups(circuit)
    exact = {lab: np.full(n_sets, _idle_factor(lab, active)) for lab in labels}
    # bins of PACK_QUBITS as for the sampler: for 156 one-qubit groups, bins of 4/6/8/10
    # qubits took 10.1/9.1/9.8/15.0 s here (loaded; ~4.8 s idle), each Aer run ~0.15 s
    for b_i, qubits in enumerate(pack_groups(groups)):
        live = [lab for lab in labels if exact[lab].any()]  # a 0 factor stays 0
        parts = {lab: _pauli_on(lab, qubits) for lab in live}
        wanted = sorted({p for p in parts.values() if set(p) - {"I"}})
        if not wanted:
            continue
        evs = _bin_evs(device, circuit, qubits, wanted, values, n_sets, seed + 7919 * b_i)
        for lab, part in parts.items():
            if part in evs:
                exact[lab] = exact[lab] * evs[part]
    shots = max(1, math.ceil(1.0 / precision**2 - 1e-9))  # 1/sqrt(n) gives n back
    rng = np.random.default_rng(seed)
    term_ev: dict[str, np.ndarray] = {}
    for lab in labels:  # each term measured with `shots` shots: binomial noise around exact
        plus = rng.binomial(shots, (1.0 + np.clip(exact[lab], -1.0, 1.0)) / 2.0)
        term_ev[lab] = (2.0 * plus / shots - 1.0).reshape(pshape)
    evs_out = np.zeros(shape)
    stds = np.zeros(shape)
    for idx in np.ndindex(shape):
        oidx = tuple(
            i if s > 1 else 0
            for i, s in zip(idx[len(idx) - len(obs.shape) :], obs.shape, strict=True)
        )
        pidx = tuple(
            i if s > 1 else 0 for i, s in zip(idx[len(idx) - len(pshape) :], pshape, strict=True)
        )
        total = 0.0
        var = 0.0
        for label, coeff in terms_per_obs[oidx].items():
            c = float(np.real(coeff))
            if label not in term_ev:  # the identity
                total += c
                continue
            ev = float(term_ev[label][pidx])
            total += c * ev
            var += c**2 * max(0.0, 1.0 - ev * ev) / shots
        evs_out[idx] = total
        stds[idx] = math.sqrt(var)
    meta = {"shots": shots, "target_precision": precision, "num_randomizations": 1}
    return evs_out, stds, meta
