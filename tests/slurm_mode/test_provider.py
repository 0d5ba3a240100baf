"""qiskit_slurm_provider off a QPU job (mode "slurm"): the seed's example program, unchanged,
from the login node and from a job without lanes (examples/provider/job-noqpu.sh): every
run() is its own Slurm job holding one lane, results as in a QPU job; a program that names
no QPU on a centre with several is told so in one line."""

from __future__ import annotations

import sys
import time

import pytest

from qproxy.emulator.reader import EmulatorReader
from tests.support.cluster import Cluster
from tests.support.provider import assert_bell, copy_example, run_example_job, summary

pytestmark = pytest.mark.slurm

PY = sys.executable


def _last_job(cluster: Cluster) -> int:
    """The newest Slurm job id the controller knows (finished ones stay for MinJobAge)."""
    out = cluster.as_user("scontrol", "-o", "show", "job").stdout
    return max((int(w[6:]) for w in out.split() if w.startswith("JobId=") and w[6:].isdigit()),
               default=0)


def _calls(upstream: EmulatorReader, t0: float, after_job: int) -> list[set[str]]:
    """The slurm_job tags of the upstream jobs since t0 (one per primitive call) whose Slurm
    job is newer than ``after_job``: the time window alone (with its slack for the emulator's
    clock) also caught the previous test's last upstream job."""
    calls = [{t for t in j.get("tags") or [] if t.startswith("slurm_job:")}
             for j in upstream.jobs_since(t0 - 2)]
    return [c for c in calls if not c or max(int(t.split(":")[1]) for t in c) > after_job]


def test_seed_example_each_call_a_job(qpu_cluster: Cluster,
                                      cluster_upstream: EmulatorReader) -> None:
    wd = qpu_cluster.workdir()
    copy_example(wd, qpu_cluster.user)
    env = {"QPU_BACKEND": "ibm_fez", "HYBRID_ROUNDS": "2", "PYTHONWARNINGS": "ignore"}
    t0, before = time.time(), _last_job(qpu_cluster)
    proc = qpu_cluster.as_user(PY, "program.py", cwd=wd, env=env, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0] == "Sampler(backend='ibm_fez', mode='slurm')"
    res = summary(proc.stdout)
    assert res["mode"] == "slurm" and res["backend"] == "ibm_fez", res
    assert_bell(res, 500 + 1000)
    tags = _calls(cluster_upstream, t0, before)
    assert len(tags) == 3 and all(len(t) == 1 for t in tags), tags
    assert len(set().union(*tags)) == 3, tags  # three calls, three Slurm jobs
    # the same program in a batch job without lanes: the same mode, from inside Slurm
    t1, before = time.time(), _last_job(qpu_cluster)
    job_id, res = run_example_job(qpu_cluster, wd, "job-noqpu.sh", "noqpu.out", 1, 400)
    assert res["mode"] == "slurm", res
    assert_bell(res, 500)
    tags = _calls(cluster_upstream, t1, before)
    assert len(tags) == 2 and f"slurm_job:{job_id}" not in set().union(*tags), tags


def test_no_backend_named_is_one_line(qpu_cluster: Cluster) -> None:
    wd = qpu_cluster.workdir()
    code = "from qiskit_slurm_provider import Estimator\nEstimator()\n"
    proc = qpu_cluster.as_user(PY, "-c", code, cwd=wd, env={"PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == ("qiskit_slurm_provider.facade.ProviderError: which QPU? pass "
                    "backend='NAME' or set QPU_BACKEND=NAME (this centre's QPUs: ibm_fez, "
                    "ibm_onprem, ibm_torino)"), proc.stderr
