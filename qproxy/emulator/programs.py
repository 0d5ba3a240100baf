"""The Runtime programs the emulator runs: ``sampler``, ``estimator`` (V2) and ``executor``.

Each program has two halves: ``prepare`` runs at submit time in the request (decode and
validate, so a malformed body is a 400 like the real service answers) and returns a
:class:`Prepared` whose ``run(seed)`` executes in a worker thread and returns the result
text the client decodes — the RuntimeEncoder JSON of a ``PrimitiveResult`` for the V2
primitives, the ``ibm-quantum-schemas`` v2.0 ``QuantumProgramResultModel`` for the executor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from .backends import Device
from .errors import ApiError
from .estimate import estimate
from .qasm import load_qasm3
from .simulate import JobFailure, check_isa, flatten_boxes, sample_circuit

DEFAULT_SHOTS = 4096
DEFAULT_PRECISION = 0.015625
MAX_SHOTS = 1_000_000
PROGRAMS = ("sampler", "estimator", "executor")


@dataclass
class Prepared:
    """A validated job: ``run(seed)`` returns the result body; ``shots`` feeds usage."""

    run: Callable[[int], str]
    shots: int
    circuits: int


def _decode(params: Any) -> dict[str, Any]:
    """Params arrive as JSON (RuntimeEncoder-shaped); decode the qiskit objects in them."""
    from qiskit_ibm_runtime import RuntimeDecoder

    if not isinstance(params, dict):
        raise ApiError(400, "'params' must be an object.", 1400)
    try:
        decoded = json.loads(json.dumps(params), cls=RuntimeDecoder)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the client's bad input
        raise ApiError(400, f"Could not decode 'params': {exc}", 1400) from None
    if not isinstance(decoded, dict):
        raise ApiError(400, "'params' must be an object.", 1400)
    return decoded


def _encode(result: Any) -> str:
    from qiskit_ibm_runtime import RuntimeEncoder

    return json.dumps(result, cls=RuntimeEncoder)


def _pubs(decoded: dict[str, Any]) -> list[Any]:
    version = decoded.get("version", 2)
    if version != 2:
        raise ApiError(400, f"Unsupported primitive version {version!r}; only 2 is.", 1400)
    pubs = decoded.get("pubs")
    if not isinstance(pubs, list) or not pubs:
        raise ApiError(400, "'params.pubs' must be a non-empty list.", 1400)
    return pubs


def _circuit_of(pub: Any, index: int) -> Any:
    """A pub's circuit: QPY (decoded by the RuntimeDecoder) or an OpenQASM 3 string."""
    from qiskit import QuantumCircuit

    circ = _first(pub)
    if isinstance(circ, str):
        return load_qasm3(circ, f"pub {index}")
    if not isinstance(circ, QuantumCircuit):
        raise ApiError(
            400, "Each pub must start with a circuit (QPY or an OpenQASM 3 string).", 1400
        )
    return circ


def _first(pub: Any) -> Any:
    return pub[0] if isinstance(pub, list | tuple) and pub else pub


def _widen(circuit: Any, width: int) -> Any:
    """The circuit on ``width`` qubits: the extra ones (higher indices) stay idle."""
    from qiskit.circuit import Qubit

    out = circuit.copy()
    out.add_bits([Qubit() for _ in range(width - circuit.num_qubits)])
    return out


def _execution_meta(start: datetime, stop: datetime, sizes: list[int]) -> dict[str, Any]:
    from qiskit_ibm_runtime.execution_span import ExecutionSpans, SliceSpan

    spans = [SliceSpan(start, stop, {i: ((n,), slice(0, n)) for i, n in enumerate(sizes)})]
    return {"execution": {"execution_spans": ExecutionSpans(spans)}, "version": 2}


def prepare_sampler(device: Device, params: Any) -> Prepared:
    """``sampler`` V2: pubs ``[circuit, parameter values?, shots?]``."""
    decoded = _decode(params)
    pubs = _pubs(decoded)
    options = decoded.get("options") or {}
    default_shots = int(options.get("default_shots") or DEFAULT_SHOTS)
    items: list[tuple[Any, Any, int]] = []
    for k, pub in enumerate(pubs):
        circ = flatten_boxes(_circuit_of(pub, k))
        values = pub[1] if isinstance(pub, list | tuple) and len(pub) > 1 else None
        shots = pub[2] if isinstance(pub, list | tuple) and len(pub) > 2 else None
        shots = int(shots or default_shots)
        if not 0 < shots <= MAX_SHOTS:
            raise ApiError(400, f"shots must be in 1..{MAX_SHOTS}.", 1400)
        if not circ.cregs:
            raise ApiError(400, "A sampler pub's circuit must have classical registers.", 1400)
        if values is not None and not isinstance(values, np.ndarray):
            values = np.asarray(values, dtype=float)
        items.append((circ, values, shots))

    def run(seed: int) -> str:
        from qiskit.primitives import PrimitiveResult
        from qiskit.primitives.containers import BitArray, DataBin, SamplerPubResult

        for circ, _, _ in items:
            check_isa(circ, device)
        start = datetime.now(UTC)
        results = []
        sizes = []
        for k, (circ, values, shots) in enumerate(items):
            bits = sample_circuit(device, circ, values, shots, seed + 104729 * k)
            arrays = {
                name: BitArray.from_bool_array(arr, order="little") for name, arr in bits.items()
            }
            shape = next(iter(arrays.values())).shape if arrays else ()
            sizes.append(max(1, math.prod(shape)) * shots)
            results.append(
                SamplerPubResult(
                    DataBin(**arrays, shape=shape),
                    metadata={"circuit_metadata": dict(circ.metadata or {})},
                )
            )
        meta = _execution_meta(start, datetime.now(UTC), sizes)
        return _encode(PrimitiveResult(results, metadata=meta))

    total = sum(s for _, _, s in items)
    return Prepared(run=run, shots=total, circuits=len(items))


def prepare_estimator(device: Device, params: Any) -> Prepared:
    """``estimator`` V2: pubs ``[circuit, observables, parameter values?, precision?]``."""
    decoded = _decode(params)
    pubs = _pubs(decoded)
    options = decoded.get("options") or {}
    default_precision = float(options.get("default_precision") or DEFAULT_PRECISION)
    if options.get("default_shots"):
        default_precision = 1.0 / math.sqrt(int(options["default_shots"]))
    twirling = options.get("twirling") or {}
    randomizations = 1
    n_rand, per_rand = twirling.get("num_randomizations"), twirling.get("shots_per_randomization")
    if isinstance(n_rand, int) and isinstance(per_rand, int) and n_rand > 0 and per_rand > 0:
        # the client's TwirlingOptions: their product takes precedence over default_shots
        default_precision = 1.0 / math.sqrt(n_rand * per_rand)
        randomizations = n_rand
    items: list[tuple[Any, Any, Any, float]] = []
    for k, pub in enumerate(pubs):
        circ = flatten_boxes(_circuit_of(pub, k))
        if not isinstance(pub, list | tuple) or len(pub) < 2:
            raise ApiError(400, "An estimator pub needs a circuit and observables.", 1400)
        observables = pub[1]
        values = pub[2] if len(pub) > 2 else None
        precision = pub[3] if len(pub) > 3 and pub[3] is not None else default_precision
        precision = float(precision)
        if not precision > 0:
            raise ApiError(400, "precision must be > 0.", 1400)
        try:
            from qiskit.primitives.containers.observables_array import ObservablesArray

            width = ObservablesArray.coerce(observables).num_qubits
        except Exception as exc:  # noqa: BLE001 - client input
            raise ApiError(400, f"Invalid observables: {exc}", 1400) from None
        if isinstance(_first(pub), str) and circ.num_qubits < width <= device.num_qubits:
            # OpenQASM 3 names physical qubits ($n), and a circuit loaded from it only
            # spans up to the highest one used; the observables span the device's layout
            circ = _widen(circ, width)
        if width != circ.num_qubits:
            raise ApiError(
                400, f"pub {k}: the observables act on {width} qubits but the circuit has "
                f"{circ.num_qubits}.", 1400,
            )  # fmt: skip
        items.append((circ, observables, values, precision))

    def run(seed: int) -> str:
        from qiskit.primitives import PrimitiveResult
        from qiskit.primitives.containers import DataBin, PubResult

        for circ, *_ in items:
            check_isa(circ, device)
        start = datetime.now(UTC)
        results = []
        sizes = []
        for k, (circ, observables, values, precision) in enumerate(items):
            evs, stds, meta = estimate(
                device, circ, observables, values, precision, seed + 104729 * k
            )
            meta["num_randomizations"] = randomizations
            sizes.append(max(1, evs.size) * meta["shots"])
            meta["circuit_metadata"] = dict(circ.metadata or {})
            meta["resilience"] = {}
            results.append(
                PubResult(
                    DataBin(evs=evs, stds=stds, ensemble_standard_error=stds, shape=evs.shape),
                    metadata=meta,
                )
            )
        meta_all = _execution_meta(start, datetime.now(UTC), sizes)
        meta_all["dynamical_decoupling"] = {"enable": False}
        meta_all["twirling"] = {"enable_gates": False, "enable_measure": False}
        meta_all["resilience"] = {"measure_mitigation": True}
        return _encode(PrimitiveResult(results, metadata=meta_all))

    shots = sum(math.ceil(1 / p**2) for *_, p in items)
    return Prepared(run=run, shots=shots, circuits=len(items))


def prepare_executor(device: Device, params: Any) -> Prepared:
    """``executor`` (quantum program, ibm-quantum-schemas v2.0) — the 0.50+ default primitives.

    Circuit items are sampled with their ``circuit_arguments``; samplex items are expanded
    with the samplex (twirling randomizations, parameter values) as IBM's service does, and
    the samplex outputs are returned next to the measured bits. ``passthrough_data`` and
    ``semantic_role`` are echoed: the client's post-processors depend on them.
    """
    if not isinstance(params, dict):
        raise ApiError(400, "'params' must be an object.", 1400)
    version = params.get("schema_version")
    if version != "v2.0":
        raise ApiError(400, f"Unsupported executor schema_version {version!r}; use v2.0.", 1400)
    try:
        from ibm_quantum_schemas.executor.version_2_0 import ParamsModel
        from qiskit_ibm_runtime.quantum_program.converters import quantum_program_from_2_0

        model = ParamsModel.model_validate(params)
        program, _options = quantum_program_from_2_0(model)
    except Exception as exc:  # noqa: BLE001 - client input
        raise ApiError(400, f"Invalid executor params: {exc}", 1400) from None
    shots = int(program.shots)
    if not 0 < shots <= MAX_SHOTS:
        raise ApiError(400, f"shots must be in 1..{MAX_SHOTS}.", 1400)

    def run(seed: int) -> str:
        from ibm_quantum_schemas.common import CompressedTensorModel
        from ibm_quantum_schemas.executor.version_2_0 import QuantumProgramResultModel
        from qiskit_ibm_runtime.fake_provider.executor.broadcast_sample import broadcast_sample
        from qiskit_ibm_runtime.quantum_program.converters.converters_2_0 import (
            passthrough_data_to_2_0,
        )
        from samplomatic.quantum_program import CircuitItem, SamplexItem

        circuits = [flatten_boxes(item.circuit) for item in program.items]
        for circ in circuits:
            check_isa(circ, device)
        rng = np.random.default_rng(seed)
        start = datetime.now(UTC)
        data = []
        parts = []
        for k, (item, circ) in enumerate(zip(program.items, circuits, strict=True)):
            extra: dict[str, np.ndarray] = {}
            if isinstance(item, CircuitItem):
                values = item.circuit_arguments
            elif isinstance(item, SamplexItem):
                if not getattr(item.samplex, "_finalized", True):
                    item.samplex.finalize()  # deserialised samplexes arrive unfinalised
                extra = dict(
                    broadcast_sample(item.samplex, item.samplex_arguments, item.shape, rng)
                )
                values = extra.pop("parameter_values")
            else:
                raise JobFailure(f"Unsupported quantum program item {type(item).__name__}.")
            if values is not None and circ.num_parameters == 0:
                values = np.asarray(values).reshape(np.shape(values)[:-1] + (0,))
            bits = sample_circuit(device, circ, values, shots, seed + 104729 * k)
            results = {**extra, **bits}
            data.append(
                {
                    "results": {
                        name: CompressedTensorModel.from_numpy(np.asarray(arr))
                        for name, arr in results.items()
                    },
                    "metadata": {},
                }
            )
            item_shape = tuple(np.shape(values)[:-1]) if values is not None else ()
            size = math.prod(item_shape)
            parts.append(
                {
                    "idx_item": k,
                    "size": size,
                    "permutation": list(range(len(item_shape))),
                    "element_range": (0, size, 1),
                }
            )
        stop = datetime.now(UTC)
        model = QuantumProgramResultModel(
            data=data,
            metadata={"chunk_timing": [{"start": start, "stop": stop, "parts": parts}]},
            passthrough_data=passthrough_data_to_2_0(program.passthrough_data),
            semantic_role=program._semantic_role,
        )
        return str(model.model_dump_json())

    return Prepared(run=run, shots=shots * max(1, len(program.items)), circuits=len(program.items))


PREPARERS: dict[str, Callable[[Device, Any], Prepared]] = {
    "sampler": prepare_sampler,
    "estimator": prepare_estimator,
    "executor": prepare_executor,
}


def prepare_blob(device: Device, params: Any) -> Prepared:
    """Diagnostic program ``qproxy-blob`` (only with ``--diagnostics``): a result of a chosen
    size, ignoring any padding in the params. It exists so benchmarks can push ~100 MB
    results and ~20 MB submissions through the real results/jobs paths without simulating
    for minutes; it is never served unless the operator asks for it."""
    if not isinstance(params, dict):
        raise ApiError(400, "'params' must be an object.", 1400)
    size = params.get("result_bytes", 0)
    if not isinstance(size, int) or not 0 <= size <= 512 * 1024 * 1024:
        raise ApiError(400, "'params.result_bytes' must be an integer in [0, 512 MiB].", 1400)

    def run(seed: int) -> str:
        import base64
        import os

        raw = os.urandom(size * 3 // 4 + 3)
        return json.dumps({"blob": base64.b64encode(raw).decode()[:size]})

    return Prepared(run=run, shots=0, circuits=0)


def enable_diagnostics() -> None:
    PREPARERS["qproxy-blob"] = prepare_blob


def prepare(program_id: str, device: Device, params: Any) -> Prepared:
    """Validate a job's input for ``program_id`` (400 on bad input, 404 on unknown program)."""
    try:
        preparer = PREPARERS[program_id]
    except KeyError:
        raise ApiError(
            404, f"Program {program_id!r} not found (available: {', '.join(PROGRAMS)}).", 1404
        ) from None
    return preparer(device, params)
