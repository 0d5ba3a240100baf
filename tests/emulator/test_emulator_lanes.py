"""Execution lanes: N parallel executions per backend, measured from job metrics timestamps.

The only timing assertions in the suite, and they are about concurrency: each job is held
Running for at least ``--min-job-seconds`` (1.5 s here), so with two lanes two jobs submitted
together overlap by about that long, and with one lane they cannot overlap at all.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from qiskit import QuantumCircuit
from qiskit.transpiler.preset_passmanagers import generate_preset_pass_manager

from qproxy.emulator.reader import EmulatorReader

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
HOLD = 1.5
WARM_TIMEOUT = 300


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def run_two(service) -> list[tuple[float, float]]:  # type: ignore[no-untyped-def]
    from qiskit_ibm_runtime import SamplerV2

    backend = service.backend("fake_torino")
    qc = QuantumCircuit(1)
    qc.x(0)
    qc.measure_all()
    isa = generate_preset_pass_manager(optimization_level=1, backend=backend).run(qc)
    jobs = [SamplerV2(mode=backend).run([isa], shots=20) for _ in range(2)]
    spans = []
    for job in jobs:
        job.result()
        stamps = job.metrics()["timestamps"]
        spans.append((_ts(stamps["running"]), _ts(stamps["finished"])))
    return spans


def test_two_lanes_run_concurrently(start_emulator, client_env_for) -> None:  # type: ignore[no-untyped-def]
    from qiskit_ibm_runtime import QiskitRuntimeService

    emu = start_emulator(
        backends="fake_torino", lanes="2", extra_args=["--min-job-seconds", str(HOLD)]
    )
    # a lane takes jobs once warm; on a loaded machine (load 13-16 on 2 cores seen) one
    # lane's warm-up can finish long after the other's, and it would run both jobs
    assert EmulatorReader(emu.url, emu.api_key).wait_warm(WARM_TIMEOUT)
    client_env_for(emu)
    (s1, e1), (s2, e2) = run_two(QiskitRuntimeService())
    overlap = min(e1, e2) - max(s1, s2)
    assert overlap > HOLD / 3, (s1, e1, s2, e2)


def test_one_lane_runs_serially(start_emulator, client_env_for) -> None:  # type: ignore[no-untyped-def]
    from qiskit_ibm_runtime import QiskitRuntimeService

    emu = start_emulator(
        backends="fake_torino", lanes="fake_torino=1", extra_args=["--min-job-seconds", str(HOLD)]
    )
    assert EmulatorReader(emu.url, emu.api_key).wait_warm(WARM_TIMEOUT)
    client_env_for(emu)
    (s1, e1), (s2, e2) = run_two(QiskitRuntimeService())
    first, second = sorted([(s1, e1), (s2, e2)])
    assert second[0] >= first[1] - 0.01, (s1, e1, s2, e2)
