"""Benchmarks 3 and 7: whole primitive jobs with the unmodified client.

3: SamplerV2/EstimatorV2 jobs through the proxy vs directly against the emulator.
7: a noisy 20-qubit sampler job through the emulator's API vs qiskit-aer in-process with the
   same options; and the emulator's lane parallelism (2 lanes vs 1 lane throughput).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench.common import alternate, median


@contextmanager
def client_env(env: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def service(env: dict[str, str]) -> Any:
    from qiskit_ibm_runtime import QiskitRuntimeService

    with client_env(env):
        return QiskitRuntimeService()


def bell_isa(backend: Any) -> Any:
    from qiskit import QuantumCircuit
    from qiskit.transpiler.preset_passmanagers import generate_preset_pass_manager

    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return generate_preset_pass_manager(optimization_level=1, backend=backend).run(qc)


def estimator_isa(backend: Any) -> tuple[Any, Any]:
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter
    from qiskit.quantum_info import SparsePauliOp
    from qiskit.transpiler.preset_passmanagers import generate_preset_pass_manager

    theta = Parameter("t")
    qc = QuantumCircuit(2)
    qc.ry(theta, 0)
    qc.cx(0, 1)
    isa = generate_preset_pass_manager(optimization_level=1, backend=backend).run(qc)
    obs = SparsePauliOp(["ZZ", "XX"]).apply_layout(isa.layout)
    return isa, obs


def _job_timer(env: dict[str, str], kind: str, backend_name: str) -> Callable[[], float]:
    from qiskit_ibm_runtime import EstimatorV2, SamplerV2

    svc = service(env)
    backend = svc.backend(backend_name)
    if kind == "sampler":
        circ = bell_isa(backend)

        def run() -> float:
            t0 = time.perf_counter()
            SamplerV2(mode=backend).run([circ], shots=1000).result()
            return time.perf_counter() - t0
    else:
        isa, obs = estimator_isa(backend)

        def run() -> float:
            t0 = time.perf_counter()
            EstimatorV2(mode=backend).run([(isa, [obs], [[0.3], [1.2]])]).result()
            return time.perf_counter() - t0

    run()  # warm-up (transpile caches, connection, simulator build)
    return run


def run_e2e(direct_env: dict[str, str], proxy_env: dict[str, str], backend_direct: str,
            backend_proxy: str, rounds: int = 5) -> list[dict[str, Any]]:
    rows = []
    for kind in ("sampler", "estimator"):
        base = _job_timer(direct_env, kind, backend_direct)
        subj = _job_timer(proxy_env, kind, backend_proxy)
        b, s = alternate(base, subj, rounds)
        ratio = median(s) / median(b)
        rows.append({
            "bench": f"3. {kind} job end-to-end",
            "baseline_s": round(median(b), 3), "subject_s": round(median(s), 3),
            "ratio": round(ratio, 3), "target": "ratio <= 1.05", "ok": ratio <= 1.05,
        })
    return rows


def circuit20(backend: Any, n: int = 20) -> Any:
    """A GHZ chain plus a layer of single-qubit gates, transpiled for the device."""
    from qiskit import QuantumCircuit
    from qiskit.transpiler.preset_passmanagers import generate_preset_pass_manager

    qc = QuantumCircuit(n)
    qc.h(0)
    for i in range(n - 1):
        qc.cx(i, i + 1)
    for i in range(n):
        qc.rz(0.1 * i, i)
        qc.sx(i)
    qc.measure_all()
    return generate_preset_pass_manager(
        optimization_level=1, backend=backend, seed_transpiler=7
    ).run(qc)


def run_emulator_vs_aer(direct_env: dict[str, str], rounds: int = 3,
                        shots: int = 16) -> dict[str, Any]:
    """Few shots: with the device's noise model every shot of a 20-qubit circuit is its own
    statevector trajectory (~0.3 s each on this machine), in Aer and in the emulator alike."""
    from qiskit_aer import AerSimulator
    from qiskit_ibm_runtime import SamplerV2
    from qiskit_ibm_runtime.fake_provider import FakeFez

    svc = service(direct_env)
    backend = svc.backend("fake_fez")
    circ = circuit20(backend)
    sim = AerSimulator.from_backend(FakeFez())

    def aer_direct() -> float:
        # The in-process baseline: what a user would do with qiskit-aer alone. It simulates
        # only the circuit's active qubits after Aer's own truncation.
        t0 = time.perf_counter()
        sim.run(circ, shots=shots).result()
        return time.perf_counter() - t0

    def via_api() -> float:
        t0 = time.perf_counter()
        SamplerV2(mode=backend).run([circ], shots=shots).result()
        return time.perf_counter() - t0

    aer_direct()
    via_api()
    b, s = alternate(aer_direct, via_api, rounds)
    ratio = median(s) / median(b)
    return {
        "bench": "7. emulator 20q noisy sampler",
        "baseline_s": round(median(b), 3), "subject_s": round(median(s), 3),
        "ratio": round(ratio, 3), "target": "ratio <= 1.2", "ok": ratio <= 1.2,
    }


def lane_throughput(env: dict[str, str], jobs: int = 4, shots: int = 300,
                    qubits: int = 14) -> float:
    """Jobs per second for `jobs` concurrent noisy sampler jobs (seconds of simulation each)."""
    from qiskit_ibm_runtime import SamplerV2

    svc = service(env)
    backend = svc.backend("fake_fez")
    circ = circuit20(backend, qubits)
    SamplerV2(mode=backend).run([circ], shots=shots).result()  # warm-up
    t0 = time.perf_counter()
    submitted = [SamplerV2(mode=backend).run([circ], shots=shots) for _ in range(jobs)]
    for job in submitted:
        job.result()
    return jobs / (time.perf_counter() - t0)
