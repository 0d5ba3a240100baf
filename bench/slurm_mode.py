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

import calendar
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench.common import CLUSTER_STATE, CLUSTER_USER, cluster_env

REPO = Path(__file__).resolve().parent.parent
STATE, USER = CLUSTER_STATE, CLUSTER_USER
EMU = f"http://127.0.0.1:{os.environ.get('QPROXY_CLUSTER_EMULATOR_PORT', '8290')}"
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
    from qproxy.slurm_primitives import SlurmSampler
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


def _env() -> dict[str, str]:
    return cluster_env(PYTHONWARNINGS="ignore")


def _as_user(*cmd: str, cwd: Path) -> str:
    env = [f"{k}={v}" for k, v in _env().items()]
    out = subprocess.run(["runuser", "-u", USER, "--", "env", "-i", *env, *cmd], cwd=cwd,
                         capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {out.stderr.strip()[:500]}")
    return out.stdout


class Emulator:
    """The cluster's emulator, read with the centre's key: job execution spans."""

    def __init__(self) -> None:
        key = (STATE / "emulator.keys").read_text().split()[0]
        body = urllib.parse.urlencode({
            "grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": key}).encode()
        with urllib.request.urlopen(f"{EMU}/identity/token", body, timeout=30) as r:
            self.token = json.load(r)["access_token"]

    def _get(self, path: str) -> Any:
        req = urllib.request.Request(f"{EMU}/api/v1{path}", headers={
            "Authorization": f"Bearer {self.token}", "Service-CRN": "bench"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.load(r)

    def spans(self, t0: float, t1: float) -> list[tuple[float, float, list[str]]]:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 - 1))
        jobs = self._get(f"/jobs?backend={UPSTREAM}&created_after={since}&limit=1000")["jobs"]
        out = []
        for j in jobs:
            ts = self._get(f"/jobs/{j['id']}/metrics")["timestamps"]
            if ts.get("running") and ts.get("finished"):
                a, b = _ts(ts["running"]), _ts(ts["finished"])
                out.append((max(a, t0), min(b, t1), list(j.get("tags") or [])))
        return [s for s in out if s[1] > s[0]]


def _ts(iso: str) -> float:
    m = re.match(r"(\d+-\d+-\d+T\d+:\d+:\d+)(\.\d+)?Z", iso)
    assert m, iso
    return calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + float(
        m.group(2) or 0)


def _workdir() -> Path:
    d = STATE / "jobs" / f"bench-{uuid.uuid4().hex[:8]}"
    d.mkdir(parents=True)
    subprocess.run(["chown", USER, str(d)], check=True)
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


def _busy(emu: Emulator, t0: float, t1: float) -> tuple[float, float]:
    spans = emu.spans(t0, t1)
    busy = sum(b - a for a, b, _ in spans)
    return busy, busy / (t1 - t0)


def run(work: Path, quick: bool) -> list[dict[str, Any]]:
    subprocess.run([PY, str(REPO / "scripts" / "cluster"), "up"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    emu = Emulator()
    n, iters, pubs = (3, 2, 1) if quick else (3, 2, 2)
    shots = 100_000
    wd = _workdir()
    # calibration, uncontended: the quantum phase Q and the per-call overhead of mode (b);
    # the first call also caches the device target (fast path for the rest): median of 3
    t0, t1, (doc,) = _programs(wd, "slurm", 1, 3, 0.0, pubs, shots, 600)
    spans = {tag: b - a for a, b, tags in emu.spans(t0, t1) for tag in tags}
    per_call = []
    for c in doc["calls"]:
        exec_s = spans.get(f"slurm_job:{c['job']}", 0.0)
        per_call.append((c["t1"] - c["t0"], exec_s))
    call_s = statistics.median(w for w, _ in per_call)
    q = statistics.median(e for _, e in per_call)
    overhead = call_s - q
    classical = round(q, 1)  # a classical phase as long as the quantum one
    rows: list[dict[str, Any]] = [{
        "bench": "slurm_mode: per-call overhead",
        "call_s": round(call_s, 2), "qpu_exec_s": round(q, 2), "overhead_s": round(overhead, 2),
        "ratio": round(call_s / q, 2), "target": "info (call/exec)", "ok": True,
    }]
    timeout = 60 + n * iters * (classical + q + overhead + 10) * 2
    ta0, ta1, _ = _programs(wd, "gres", n, iters, classical, pubs, shots, timeout)
    busy_a, frac_a = _busy(emu, ta0, ta1)
    tb0, tb1, _ = _programs(wd, "slurm", n, iters, classical, pubs, shots, timeout)
    busy_b, frac_b = _busy(emu, tb0, tb1)
    ratio = frac_b / frac_a if frac_a else float("nan")
    rows.append({
        "bench": "slurm_mode: lane busy (b)/(a)",
        "programs": n, "iterations": iters, "classical_s": classical, "quantum_s": round(q, 2),
        "makespan_a_s": round(ta1 - ta0, 1), "busy_a": round(frac_a, 3),
        "makespan_b_s": round(tb1 - tb0, 1), "busy_b": round(frac_b, 3),
        "ratio": round(ratio, 2), "target": ">= 1.8x", "ok": ratio >= 1.8,
    })
    (work / "slurm_mode.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    for row in run(Path(os.environ.get("TMPDIR", "/tmp")), quick):
        print(json.dumps(row))
