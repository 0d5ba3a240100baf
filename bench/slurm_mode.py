"""Slurm mode vs gres-like: how busy does a 1-lane QPU stay under N hybrid programs?

Each program alternates a classical phase (sleep: it must not steal the 2 shared cores from
the emulator) with a quantum phase (a sampler call on a deep 10-qubit circuit, 100k shots:
long to execute, small result) and the classical phase is set to the measured execution time.
(a) gres-like: each program is one job holding the lane (``-L ibm_torino:1``) for its whole
run, so the lane idles during every classical phase. (b) slurm mode: programs run as jobs
without a lane and each call is a SlurmSampler job asking ``-L ibm_torino:1`` for just that
call. The licence mapping is used because ibm_torino has one lane: Slurm then queues jobs for
it (the node-wide qpu GRES would start three and let the lease refuse two).

Mode (b) uses the primitives' defaults, including the fast path (client-side transpilation
against the cached device target, stdlib-only job side), which the calibration call sets up.

Busy fraction = sum of emulator execution spans (the emulator's job metrics: running ->
finished) inside the window / the window (first submit -> last program done). Per-call
overhead = wall time of one uncontended call minus its emulator execution time.
Needs root and the local cluster (``scripts/cluster up``; QPROXY_CLUSTER_* respected).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from qproxy.emulator.reader import EmulatorReader
from tests.support.cluster import EMULATOR_URL, SETTINGS, Cluster, cluster_cmd, cluster_env

BACKEND, UPSTREAM = "ibm_torino", "fake_torino"
PY = sys.executable

WORKER = r'''
import json, os, sys, time
from qiskit import QuantumCircuit
mode, iters, classical, pubs, shots, out = sys.argv[1:7]
iters, classical, pubs, shots = int(iters), float(classical), int(pubs), int(shots)
qc = QuantumCircuit(10)  # deep, so execution is long while the result stays small
for layer in range(40):
    for i in range(10):
        qc.rz(0.1 * (i + layer), i)
        qc.sx(i)
    for i in range(layer % 2, 9, 2):
        qc.cx(i, i + 1)
qc.measure_all()
t_start = time.time()
if mode == "gres":
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_ibm_runtime import QiskitRuntimeService, SamplerV2
    backend = QiskitRuntimeService().backend(os.environ["QPU_BACKEND"])
    qc = generate_preset_pass_manager(optimization_level=1, backend=backend).run(qc)
    sampler = SamplerV2(mode=backend)
else:
    from qproxy.client.slurm_mode import SlurmSampler
    sampler = SlurmSampler(os.environ["BENCH_BACKEND"], lanes_via="license")
calls = []
for i in range(iters):
    if classical:
        time.sleep(classical)
    t0 = time.time()
    job = sampler.run([qc] * pubs, shots=shots)
    job.result()
    calls.append({"job": job.job_id(), "t0": t0, "t1": time.time()})
with open(out + ".tmp", "w") as fh:
    json.dump({"start": t_start, "end": time.time(), "calls": calls}, fh)
os.replace(out + ".tmp", out)
'''


CLUSTER = Cluster(SETTINGS, cluster_env(PYTHONWARNINGS="ignore"))


def _as_user(*cmd: str, cwd: Path) -> str:
    out = CLUSTER.as_user(*cmd, cwd=cwd, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {out.stderr.strip()[:500]}")
    return out.stdout


def _workdir() -> Path:
    d = CLUSTER.workdir()
    (d / "worker.py").write_text(WORKER)
    return d


def _programs(wd: Path, mode: str, n: int, iters: int, classical: float, pubs: int,
              shots: int, timeout: float) -> tuple[float, float, list[dict[str, Any]]]:
    """Submit N programs at once; wait for all; return (t_submit, t_done, outputs)."""
    lane = ["-L", f"{BACKEND}:1", f"--q_backend={BACKEND}"] if mode == "gres" else []
    outs = [wd / f"{mode}-{i}.json" for i in range(n)]
    t0 = time.time()
    for i, out in enumerate(outs):
        _as_user("sbatch", "--parsable", f"--job-name=bench-{mode}-{i}", *lane,
                 f"--output={wd / f'{mode}-{i}.log'}",
                 f"--export=ALL,BENCH_BACKEND={BACKEND},QPROXY_SLURM_WORKDIR={wd / 'prim'}",
                 "--wrap", f"{PY} {wd / 'worker.py'} {mode} {iters} {classical} {pubs} "
                 f"{shots} {out}", cwd=wd)
    deadline = time.monotonic() + timeout
    while not all(o.exists() for o in outs):
        if time.monotonic() > deadline:
            logs = "\n".join((wd / f"{mode}-{i}.log").read_text()[-500:] for i in range(n)
                             if (wd / f"{mode}-{i}.log").exists())
            raise TimeoutError(f"{mode} programs not done after {timeout}s:\n{logs}")
        time.sleep(0.5)
    docs = [json.loads(o.read_text()) for o in outs]
    return t0, max(d["end"] for d in docs), docs


def _handoffs(spans: list[tuple[float, float, list[str]]],
              docs: list[dict[str, Any]]) -> list[float]:
    """Lane idle time between one call's execution and the next one's, counted only when the
    next call was already waiting in Slurm: the handoff cost of mode (b) under contention."""
    asked = {f"slurm_job:{c['job']}": c["t0"] for d in docs for c in d["calls"]}
    gaps = []
    for (_, end, _), (start, _, tags) in zip(spans, spans[1:], strict=False):
        t_ask = next((asked[t] for t in tags if t in asked), None)
        if t_ask is not None and t_ask < end:
            gaps.append(start - end)
    return gaps


def run(work: Path, quick: bool) -> list[dict[str, Any]]:
    cluster_cmd("up", check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    emu = EmulatorReader(EMULATOR_URL, CLUSTER.vendor_secret())
    emu.wait_warm(300)  # calibrate on warm lanes; on timeout (False) calibrate anyway
    # All programs start with a classical phase, so the lane idles for one classical phase
    # in both modes; with K calls in all and C = Q even a zero-overhead mode (b) is capped at
    # busy K/(K+1) against (a)'s 1/2, i.e. a ratio of 2K/(K+1): 1.71 for K = 6 (3 programs x 2
    # iterations), 1.89 for K = 18. The full run uses K = 18 so the ratio measures the
    # steady state the issue asks about rather than the ramp.
    n, iters, pubs = (3, 2, 1) if quick else (3, 6, 2)
    shots = 100_000
    wd = _workdir()
    # calibration, uncontended: the quantum phase Q and the per-call overhead of mode (b);
    # the first call caches the device target (fast path for the rest) and warms up, so the
    # figures are medians of the 3 calls after it
    t0, t1, (doc,) = _programs(wd, "slurm", 1, 4, 0.0, pubs, shots, 600)
    spans = {tag: b - a for a, b, tags in emu.spans(t0, t1, UPSTREAM) for tag in tags}
    per_call = []
    for c in doc["calls"][1:]:
        exec_s = spans.get(f"slurm_job:{c['job']}", 0.0)
        per_call.append((c["t1"] - c["t0"], exec_s))
    call_s = statistics.median(w for w, _ in per_call)
    q = statistics.median(e for _, e in per_call)
    overhead = call_s - q
    classical = round(q, 1)  # a classical phase as long as the quantum one
    rows: list[dict[str, Any]] = [{
        "bench": "8. slurm mode: per-call overhead",
        "call_s": round(call_s, 2), "qpu_exec_s": round(q, 2), "overhead_s": round(overhead, 2),
        "ratio": round(call_s / q, 2), "target": "info (call/exec)", "ok": True,
    }]
    timeout = 60 + n * iters * (classical + q + overhead + 10) * 2
    ta0, ta1, _ = _programs(wd, "gres", n, iters, classical, pubs, shots, timeout)
    busy_a = sum(b - a for a, b, _ in emu.spans(ta0, ta1, UPSTREAM))
    frac_a = busy_a / (ta1 - ta0)
    tb0, tb1, docs_b = _programs(wd, "slurm", n, iters, classical, pubs, shots, timeout)
    spans_b = emu.spans(tb0, tb1, UPSTREAM)  # sorted by start
    busy_b = sum(b - a for a, b, _ in spans_b)
    frac_b = busy_b / (tb1 - tb0)
    gaps = _handoffs(spans_b, docs_b)
    ratio = frac_b / frac_a if frac_a else float("nan")
    # Execution speed drifts on a shared machine: (a)'s busy fraction is Q/(C+Q), so the
    # comparison is only fair if the calibrated C still matches Q during (a)
    calls = n * iters
    q_a, q_b = busy_a / calls, busy_b / calls
    fair = 0.85 <= classical / q_a <= 1.15
    rows.append({
        "bench": "8. slurm mode: lane busy (b)/(a)",
        "programs": n, "iterations": iters, "classical_s": classical, "quantum_s": round(q, 2),
        "makespan_a_s": round(ta1 - ta0, 1), "busy_a": round(frac_a, 3),
        "makespan_b_s": round(tb1 - tb0, 1), "busy_b": round(frac_b, 3),
        "handoff_median_s": round(statistics.median(gaps), 2) if gaps else None,
        "handoff_max_s": round(max(gaps), 2) if gaps else None,
        "exec_per_call_a_s": round(q_a, 2), "exec_per_call_b_s": round(q_b, 2),
        "classical_over_quantum_a": round(classical / q_a, 2),
        "bound_zero_overhead": round(2 * calls / (calls + 1), 2),
        "ratio": round(ratio, 2),
        "target": ">= 1.8x (valid if C/Q in (a) is 0.85-1.15)", "ok": ratio >= 1.8 and fair,
    })
    (work / "slurm_mode.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    for row in run(Path(os.environ.get("TMPDIR", "/tmp")), quick):
        print(json.dumps(row))
