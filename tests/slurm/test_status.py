"""`qproxy status` on the real cluster: a running job's proxy with the lanes it holds and
uses while its upstream job runs (and frees when it ends); inconsistent states (a proxy killed
as root, a lease without a job, a proxy without a record) each get a clear line saying what
`qproxy hook reap` would do -- and reap then does exactly that."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from qproxy.config import load
from qproxy.slurm import lease
from tests.support.cluster import Cluster, slurm_exec
from tests.support.waiting import wait_for

# One upstream sampler job long enough to be seen running (2 x 1M shots: ~9 s in the emulator
# here once warm; its first job on a fresh emulator also waits for the device model), then
# a marker file, then the Slurm job stays up so its proxy can be seen idle.
PROGRAM = """
import os, pathlib
from qiskit import QuantumCircuit
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import QiskitRuntimeService, SamplerV2
backend = QiskitRuntimeService().backend(os.environ["QPU_BACKEND"])
qc = QuantumCircuit(2); qc.h(0); qc.cx(0, 1); qc.measure_all()
isa = generate_preset_pass_manager(optimization_level=1, backend=backend).run(qc)
job = SamplerV2(mode=backend).run([isa, isa], shots=1_000_000)
print("upstream job", job.job_id(), flush=True)
job.result()
pathlib.Path("done").write_text(job.job_id())
"""


def status(cluster: Cluster, *extra: str) -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        [*slurm_exec(), sys.executable, "-m", "qproxy", "status", "--config",
         str(cluster.config), "--json", *extra], env=cluster.env, capture_output=True,
        text=True, timeout=60)
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, json.loads(out.stdout)


def proxy_of(doc: dict[str, Any], job_id: str) -> dict[str, Any] | None:
    return next((p for p in doc["proxies"] if p["job_id"] == job_id), None)


def test_status_shows_running_job_with_its_lanes(qpu_cluster: Cluster) -> None:
    wd = qpu_cluster.workdir()
    (wd / "program.py").write_text(PROGRAM)
    job = qpu_cluster.sbatch("export PYTHONWARNINGS=ignore\npython3 program.py\nsleep 60\n",
                             "--q_backend=ibm_fez", "-L", "ibm_fez:2", "-t", "5",
                             wait=False, workdir=wd)
    try:
        qpu_cluster.wait_state(job.id, {"RUNNING"})

        def busy() -> dict[str, Any] | None:
            # the lane is in use from the moment the submission takes it, before upstream
            # has answered with the job: wait for both
            p = proxy_of(status(qpu_cluster)[1], job.id)
            return p if p and p["lanes_in_use"] == 1 and p["upstream_jobs"] == 1 else None

        p = wait_for(busy, 120, "the upstream job to hold a lane")
        assert p["lanes_held"] == 2 and p["alive"] and p["in_slurm"] is True, p
        assert p["queued"] + p["running"] == 1 and p["upstream_jobs"] == 1, p
        assert p["user"] == qpu_cluster.user and p["resource"] == "ibm_fez", p
        assert p["port"] and 0 < p["seconds_left"] <= 300, p
        rc, doc = status(qpu_cluster)
        fez = next(lv for lv in doc["leases"] if lv["resource"] == "ibm_fez")
        assert fez == {"resource": "ibm_fez", "lanes": 2, "held": {job.id: 2}}, fez
        dev = {d["resource"]: d for d in doc["devices"]}
        assert dev["ibm_fez"]["reachable"] and dev["ibm_fez"]["online"], dev
        assert doc["slurm"] == "ok" and not [q for q in doc["problems"]
                                             if q["job_id"] == job.id], doc["problems"]
        text = subprocess.run(
            [*slurm_exec(), sys.executable, "-m", "qproxy", "status", "--config",
             str(qpu_cluster.config)],
            env=qpu_cluster.env, capture_output=True, text=True, timeout=60).stdout
        row = next(ln for ln in text.splitlines() if ln.strip().startswith(job.id + " "))
        assert " 2/1 " in row and "ibm_fez" in row, text

        # the proxy's status file is root's alone: no job user reads it, not even its own
        sfile = qpu_cluster.run_dir / job.id / "status.json"
        assert sfile.stat().st_mode & 0o777 == 0o600
        assert (qpu_cluster.run_dir / job.id).stat().st_mode & 0o777 == 0o700
        assert qpu_cluster.as_user("cat", str(sfile)).returncode != 0

        wait_for(lambda: (wd / "done").exists(), 180, "the upstream job's result")

        def idle() -> dict[str, Any] | None:
            p = proxy_of(status(qpu_cluster, "--no-devices")[1], job.id)
            return p if p and p["lanes_in_use"] == 0 else None

        p = wait_for(idle, 10, "the lane to be free again")
        assert p["upstream_jobs"] == 1 and p["queued"] == p["running"] == 0, p
        assert p["lanes_held"] == 2, p  # Slurm's allocation is held until the job ends
    finally:
        qpu_cluster.as_user("scancel", job.id)
    qpu_cluster.wait_gone(job.id)
    assert proxy_of(status(qpu_cluster, "--no-devices")[1], job.id) is None
    # and `qproxy usage` books it (this cluster has no slurmdbd: the line's own times)
    out = subprocess.run(
        [*slurm_exec(), sys.executable, "-m", "qproxy", "usage", "--config",
         str(qpu_cluster.config), "--json"], env=qpu_cluster.env, capture_output=True,
        text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    run = next(r for r in doc["runs"] if r["job_id"] == job.id)
    line = qpu_cluster.usage(job.id)
    assert line is not None and doc["sacct"] == "unavailable"
    assert (run["upstream_jobs"], run["lanes"], run["elapsed_from"]) == (1, 2, "usage")
    assert run["qpu_seconds"] == line["quantum_seconds"] and run["qpu_seconds"] > 0
    assert abs(run["lane_seconds"] - 2 * (line["time"] - line["started"])) < 1e-6  # type: ignore[operator]


def test_inconsistent_states_get_a_line_and_reap_does_what_it_says(
        qpu_cluster: Cluster) -> None:
    config = load(qpu_cluster.config)
    wd = qpu_cluster.workdir()
    job = qpu_cluster.sbatch("touch started\nsleep 60\n", "--q_backend=ibm_fez",
                             "--gres=qpu:1", wait=False, workdir=wd)
    stale = "999998"  # a lease whose job left no state behind
    orphan = subprocess.Popen(  # looks like a proxy of job 999997, which has no state dir
        [sys.executable, "-c", "import time; time.sleep(120)", "serve", "--job-id", "999997",
         "--config", str(qpu_cluster.config)], start_new_session=True)
    try:
        qpu_cluster.wait_state(job.id, {"RUNNING"})
        # the task runs (task-env, which refuses a job whose proxy is gone, is behind it)
        wait_for(lambda: (wd / "started").exists(), 60, "the job's script to start")
        rec = _record(qpu_cluster.run_dir / job.id)
        assert rec is not None
        os.kill(rec["pid"], signal.SIGKILL)  # the proxy dies as root kills it
        wait_for(lambda: not Path(f"/proc/{rec['pid']}").exists() or _zombie(rec["pid"]), 10,
                 "the proxy to be gone")
        lease.acquire(config, config.resources["ibm_torino"], stale, 1)

        rc, doc = status(qpu_cluster, "--no-devices")
        assert rc == 1
        problems = {(q["job_id"], q["what"].split(" (")[0]): q for q in doc["problems"]}
        dead = problems[(job.id, "record without a process")]
        assert dead["pid"] == rec["pid"]
        assert dead["reap"].startswith("leaves it: Slurm still runs the job"), dead
        assert problems[(stale, "lease without a job")]["reap"] == "releases the lease"
        assert problems[("999997", "process without a record")]["reap"] == \
            f"stops pid {orphan.pid}"
        assert proxy_of(doc, job.id)["alive"] is False  # type: ignore[index]
        text = subprocess.run(
            [*slurm_exec(), sys.executable, "-m", "qproxy", "status", "--config",
             str(qpu_cluster.config), "--no-devices"], env=qpu_cluster.env,
            capture_output=True, text=True, timeout=60).stdout
        assert (f"! job {job.id}: record without a process (pid {rec['pid']} is not this "
                f"job's proxy) -> reap: leaves it: Slurm still runs the job") in text, text
        assert f"! job {stale}: lease without a job (1 lane(s) of ibm_torino) -> reap: " \
               "releases the lease" in text, text

        reap = subprocess.run(
            [*slurm_exec(), sys.executable, "-m", "qproxy", "hook", "reap", "--config",
             str(qpu_cluster.config)], env=qpu_cluster.env, capture_output=True, text=True,
            timeout=60)
        assert reap.returncode == 0, reap.stderr
        assert orphan.wait(timeout=20) == -signal.SIGTERM
        assert stale not in lease.peek(config).get("ibm_torino", {})
        assert (qpu_cluster.run_dir / job.id / "record.json").exists()  # left to its epilog
        rc, doc = status(qpu_cluster, "--no-devices")
        assert [q["job_id"] for q in doc["problems"]] == [job.id], doc["problems"]
    finally:
        orphan.kill()
        lease.release(config, stale)
        qpu_cluster.as_user("scancel", job.id)
    qpu_cluster.wait_gone(job.id)
    rc, doc = status(qpu_cluster, "--no-devices")
    assert rc == 0 and doc["problems"] == [], doc["problems"]
    assert qpu_cluster.node_state() == "idle"


def _record(job_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((job_dir / "record.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def _zombie(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
