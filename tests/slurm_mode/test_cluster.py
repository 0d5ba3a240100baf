"""Slurm-mode primitives on the real local cluster (scripts/cluster): results agree with the
gres-like path, and cancel / failure / time limit / deadlock each end in the right exception
with no Slurm job, job proxy or upstream job left behind. Programs run as the unprivileged
job user, exactly as a user's would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qproxy.emulator.reader import EmulatorReader
from tests.support.cluster import Cluster, slurm_exec

pytestmark = pytest.mark.slurm

PY = sys.executable

CIRCUITS = """
import json, sys, time
import numpy as np
from qiskit import QuantumCircuit
from qiskit.quantum_info import SparsePauliOp
bell = QuantumCircuit(2)
bell.h(0)
bell.cx(0, 1)
bell_m = bell.measure_all(inplace=False)
OBS = [SparsePauliOp("ZZ"), SparsePauliOp("XX"), SparsePauliOp("IZ")]
def report(**kw):
    print("RESULT " + json.dumps(kw), flush=True)
def summary(sres, eres):
    counts = sres[0].data.meas.get_counts()
    shots = sum(counts.values())
    return dict(p_same=(counts.get("00", 0) + counts.get("11", 0)) / shots, shots=shots,
                evs=np.asarray(eres[0].data.evs).tolist(),
                stds=np.asarray(eres[0].data.stds).tolist())
"""


def _script(wd: Path, body: str) -> Path:
    path = wd / "prog.py"
    path.write_text(CIRCUITS + textwrap.dedent(body))
    path.chmod(0o644)
    return path


def _result(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise AssertionError(f"no RESULT line in:\n{stdout}")


def _user_env(cluster: Cluster, wd: Path) -> dict[str, str]:
    return {"QPROXY_SLURM_WORKDIR": str(wd / "prim"), "PYTHONWARNINGS": "ignore"}


def _run(cluster: Cluster, wd: Path, body: str, timeout: float = 300) -> dict[str, Any]:
    script = _script(wd, body)
    proc = cluster.as_user(PY, str(script), cwd=wd, env=_user_env(cluster, wd), timeout=timeout)
    assert proc.returncode == 0, f"program failed:\n{proc.stdout}\n{proc.stderr}"
    return _result(proc.stdout)


def _squeue(cluster: Cluster) -> list[str]:
    out = subprocess.run([*slurm_exec(), "squeue", "-h", "-o", "%i %j %T"], env=cluster.env,
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def _assert_nothing_left(cluster: Cluster, upstream: EmulatorReader, job_ids: list[str],
                         t0: float) -> None:
    """No Slurm job in the queue, each job's proxy state torn down (usage record written by
    the epilog) and every upstream job those jobs created in a final state."""
    for job_id in job_ids:
        cluster.wait_state(job_id, {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT"}, timeout=60)
        cluster.wait_gone(job_id)
    deadline = time.monotonic() + 30
    while _squeue(cluster) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _squeue(cluster) == []
    tags = {f"slurm_job:{j}" for j in job_ids}
    mine = [j for j in upstream.jobs_since(t0 - 2) if tags & set(j.get("tags") or [])]
    assert all(j["status"] in ("Completed", "Failed", "Cancelled") for j in mine), mine


def test_agrees_with_gres_like_path(qpu_cluster: Cluster, cluster_upstream: EmulatorReader) -> None:
    t0 = time.time()
    wd = qpu_cluster.workdir()
    # (b) slurm mode from the login node: two primitive calls in flight at once
    slurm = _run(qpu_cluster, wd, """
        from qproxy.client.slurm_mode import SlurmEstimator, SlurmSampler, SlurmJobStatus
        sj = SlurmSampler("ibm_fez").run([bell_m], shots=4000)
        ej = SlurmEstimator("ibm_fez").run([(bell, OBS)], precision=0.02)
        first = [sj.status().value, ej.status().value]
        out = summary(sj.result(), ej.result())
        assert sj.status() is SlurmJobStatus.DONE and ej.done()
        # second round: the device target is cached now -> client ISA + stdlib fast path
        sj2 = SlurmSampler("ibm_fez").run([bell_m], shots=4000)
        ej2 = SlurmEstimator("ibm_fez").run([(bell, OBS)], precision=0.02)
        fast = summary(sj2.result(), ej2.result())
        report(ids=[sj.job_id(), ej.job_id(), sj2.job_id(), ej2.job_id()], first=first,
               fast_path=[sj.metadata["fast_path"], sj2.metadata["fast_path"],
                          ej2.metadata["fast_path"]], fast=fast, **out)
    """)
    assert set(slurm["first"]) <= {"PENDING", "RUNNING"}
    assert slurm["fast_path"] == [False, True, True]
    # (a) gres-like: the stock client inside a --gres=qpu:1 --q_backend job
    script = _script(wd, """
        from qiskit.transpiler import generate_preset_pass_manager
        from qiskit_ibm_runtime import EstimatorV2, QiskitRuntimeService, SamplerV2
        backend = QiskitRuntimeService().backend("ibm_fez")
        pm = generate_preset_pass_manager(optimization_level=1, backend=backend)
        isa_m, isa = pm.run(bell_m), pm.run(bell)
        sres = SamplerV2(mode=backend).run([isa_m], shots=4000).result()
        obs = [o.apply_layout(isa.layout) for o in OBS]
        eres = EstimatorV2(mode=backend).run([(isa, obs)], precision=0.02).result()
        report(**summary(sres, eres))
    """)
    job = qpu_cluster.sbatch(f"{PY} {script}\n", "--gres=qpu:1", "--q_backend=ibm_fez", workdir=wd,
                     env={"PYTHONWARNINGS": "ignore"})
    assert job.state == "COMPLETED", job.output()
    gres = _result(job.output())
    assert abs(slurm["p_same"] - gres["p_same"]) < 0.05
    assert slurm["shots"] == gres["shots"] == 4000
    for a, b, sa, sb in zip(slurm["evs"], gres["evs"], slurm["stds"], gres["stds"],
                            strict=True):
        assert abs(a - b) <= 5 * np.hypot(sa, sb) + 0.02, (slurm, gres)
    fast = slurm["fast"]
    assert abs(fast["p_same"] - gres["p_same"]) < 0.05
    for a, b, sa, sb in zip(fast["evs"], gres["evs"], fast["stds"], gres["stds"], strict=True):
        assert abs(a - b) <= 5 * np.hypot(sa, sb) + 0.02, (fast, gres)
    assert slurm["evs"][0] > 0.8 and abs(slurm["evs"][2]) < 0.15  # a Bell state
    _assert_nothing_left(qpu_cluster, cluster_upstream, [*slurm["ids"], job.id], t0)
    # job dirs removed (a directory the job's step was still writing to is retried once its
    # Slurm job is final)
    deadline = time.monotonic() + 40
    while [p.name for p in (wd / "prim").iterdir()] != [".targets"] and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    assert [p.name for p in (wd / "prim").iterdir()] == [".targets"]


def test_cancel_mid_run(qpu_cluster: Cluster, cluster_upstream: EmulatorReader) -> None:
    """Cancel while qrun's upstream job runs: SlurmJobCancelled, and the epilog cancels the
    upstream job."""
    t0 = time.time()
    wd = qpu_cluster.workdir()
    script = _script(wd, """
        import os
        from qproxy.client.slurm_mode import SlurmSampler, SlurmJobCancelled
        n = 10
        qc = QuantumCircuit(n)
        qc.h(0)
        for i in range(n - 1):
            qc.cx(i, i + 1)
        qc.measure_all()
        job = SlurmSampler("ibm_fez").run([qc] * 2, shots=1_000_000)  # shots <= 1e6 per pub
        print("JOB", job.job_id(), flush=True)
        while not os.path.exists("go"):
            time.sleep(0.1)
        assert job.cancel() is True
        try:
            job.result()
        except SlurmJobCancelled as exc:
            report(job=job.job_id(), exc=type(exc).__name__, state=exc.slurm_state,
                   msg=str(exc), status=job.status().value)
    """)
    env = dict(qpu_cluster.env, **_user_env(qpu_cluster, wd))
    proc = subprocess.Popen(
        [*slurm_exec(qpu_cluster.user), "env", "-i",
         *[f"{k}={v}" for k, v in env.items()], PY, str(script)],
        cwd=wd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("JOB "), line + proc.stderr.read() if proc.stderr else ""
        job_id = line.split()[1]
        deadline = time.monotonic() + 120
        running: list[dict[str, Any]] = []
        while not running and time.monotonic() < deadline and proc.poll() is None:
            running = [j for j in cluster_upstream.jobs_since(t0 - 2, pending=True)
                       if f"slurm_job:{job_id}" in (j.get("tags") or [])]
            time.sleep(0.3)
        assert running, "the primitive job never reached the QPU: " + "".join(
            (wd / "prim").glob("*/slurm.out").__next__().read_text() for _ in [0])
        (wd / "go").write_text("")
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    res = _result(out)
    assert res["exc"] == "SlurmJobCancelled" and res["state"] == "CANCELLED"
    assert res["status"] == "CANCELLED" and job_id in res["msg"]
    _assert_nothing_left(qpu_cluster, cluster_upstream, [job_id], t0)
    statuses = {cluster_upstream.get(f"/jobs/{j['id']}")["status"] for j in running}
    assert statuses == {"Cancelled"}, statuses


def test_failure_carries_job_output(qpu_cluster: Cluster, cluster_upstream: EmulatorReader) -> None:
    t0 = time.time()
    wd = qpu_cluster.workdir()
    res = _run(qpu_cluster, wd, """
        from qproxy.client.slurm_mode import SlurmSampler, SlurmJobFailed, SlurmSubmitError
        big = QuantumCircuit(200)
        big.h(0)
        big.measure_all()
        job = SlurmSampler("ibm_torino", lanes_via="license").run([big])
        try:
            job.result()
        except SlurmJobFailed as exc:
            failed = dict(job=exc.job_id, cls=type(exc).__name__, state=exc.slurm_state,
                          tail=exc.output_tail, msg=str(exc))
        try:  # refused by sbatch, or by the job's prolog: either way a clear error
            SlurmSampler("no_such_qpu").run([bell_m]).result()
        except (SlurmSubmitError, SlurmJobFailed) as exc:
            submit = str(exc)
        report(failed=failed, submit=submit, id=job.job_id())
    """)
    f = res["failed"]
    assert f["cls"] == "SlurmJobFailed" and f["state"] == "FAILED" and f["job"] == res["id"]
    assert "qrun: error:" in f["tail"] and res["id"] in f["msg"]
    assert "unknown QPU backend 'no_such_qpu'" in res["submit"]
    _assert_nothing_left(qpu_cluster, cluster_upstream, [res["id"]], t0)


@pytest.mark.slow
def test_time_limit(qpu_cluster: Cluster, cluster_upstream: EmulatorReader) -> None:
    """Slurm's smallest limit is a minute: the job's qrun is made to sleep past it."""
    t0 = time.time()
    wd = qpu_cluster.workdir()
    res = _run(qpu_cluster, wd, f"""
        from qproxy.client.slurm_mode import SlurmSampler, SlurmJobTimeout
        slow = ["bash", "-c", 'sleep 600; exec "$@"', "_", {PY!r}, "-m", "qproxy.client.qrun"]
        job = SlurmSampler("ibm_fez", time_limit="1", qrun=slow).run([bell_m])
        try:
            job.result()
        except SlurmJobTimeout as exc:
            report(id=job.job_id(), cls=type(exc).__name__, state=exc.slurm_state,
                   msg=str(exc))
    """, timeout=400)
    assert res["cls"] == "SlurmJobTimeout" and res["state"] == "TIMEOUT"
    assert "time limit" in res["msg"] and res["id"] in res["msg"]
    _assert_nothing_left(qpu_cluster, cluster_upstream, [res["id"]], t0)


def test_deadlock_guard(qpu_cluster: Cluster) -> None:
    wd = qpu_cluster.workdir()
    script = _script(wd, """
        import sys
        from qproxy.client.slurm_mode import DeadlockError, SlurmSampler
        backend, via = sys.argv[1], sys.argv[2]
        try:
            job = SlurmSampler(backend, lanes_via=via, submit_timeout=5).run([bell_m])
            report(submitted=job.job_id())
            job.cancel()
        except DeadlockError as exc:
            report(deadlock=str(exc), job=exc.job_id)
    """)
    cases = [
        # all of ibm_torino's lanes, as a licence; the primitive job asks the licence
        (["-L", "ibm_torino:1", "--q_backend=ibm_torino"], "ibm_torino", "license"),
        # all of ibm_fez's lanes, as GRES; the primitive job asks GRES
        (["--gres=qpu:2", "--q_backend=ibm_fez"], "ibm_fez", "gres"),
    ]
    for args, backend, via in cases:
        job = qpu_cluster.sbatch(f"{PY} {script} {backend} {via}\n", *args, workdir=wd,
                         env=_user_env(qpu_cluster, wd))
        res = _result(job.output())
        assert "deadlock" in res, (args, res)
        assert res["job"] == job.id and f"job {job.id}" in res["deadlock"]
        assert backend in res["deadlock"]
    # not a deadlock: the job holds one of ibm_fez's two lanes; the primitive job may run
    job = qpu_cluster.sbatch(f"{PY} {script} ibm_fez license\n", "-L", "ibm_fez:1",
                     "--q_backend=ibm_fez", workdir=wd, env=_user_env(qpu_cluster, wd))
    assert "submitted" in _result(job.output()), job.output()
    # and a user-set SLURM_JOB_ID proves nothing: outside any job, no refusal
    env = dict(_user_env(qpu_cluster, wd), SLURM_JOB_ID=job.id)
    proc = qpu_cluster.as_user(PY, str(script), "ibm_torino", "license", cwd=wd, env=env)
    assert "submitted" in _result(proc.stdout), proc.stderr
    assert os.path.exists(wd)
