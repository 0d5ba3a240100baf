"""qiskit_slurm_provider inside a QPU job (mode "job"): the seed's hybrid example as written
(examples/provider/job.sh: --gres=qpu:1 --q_backend=ibm_fez, srun python3 program.py) runs
SamplerV2/EstimatorV2 on the job's proxy, as the job user; a request the job cannot serve is
one line on the job's output."""

from __future__ import annotations

import sys
import time

from qproxy.emulator.reader import EmulatorReader
from tests.support.cluster import Cluster
from tests.support.provider import assert_bell, copy_example, run_example_job

PY = sys.executable


def test_seed_example_in_a_qpu_job(qpu_cluster: Cluster,
                                   cluster_upstream: EmulatorReader) -> None:
    t0 = time.time()
    wd = qpu_cluster.workdir()
    copy_example(wd, qpu_cluster.user)
    job_id, res = run_example_job(qpu_cluster, wd, "job.sh", "out.txt", 2, 300)
    assert res["mode"] == "job" and res["backend"] == "ibm_fez", res
    assert_bell(res, 500 + 1000)
    # every call went through this job's proxy (its tag), none as a job of its own
    mine = [j for j in cluster_upstream.jobs_since(t0 - 2)
            if f"slurm_job:{job_id}" in (j.get("tags") or [])]
    assert len(mine) == 3 and all(j["status"] == "Completed" for j in mine), mine


def test_wrong_backend_in_a_qpu_job_is_one_line(qpu_cluster: Cluster) -> None:
    code = "from qiskit_slurm_provider import Sampler\nSampler('ibm_torino')\n"
    job = qpu_cluster.sbatch(f"{PY} -c \"{code}\"\n", "--gres=qpu:1", "--q_backend=ibm_fez")
    out = job.output()
    assert job.state == "FAILED", out
    last = out.strip().splitlines()[-1]
    assert last == ("qiskit_slurm_provider.facade.ProviderError: this job's QPU is 'ibm_fez' "
                    "(--q_backend), not 'ibm_torino': use backend='ibm_fez', or mode='slurm' "
                    "to submit each call for 'ibm_torino' as its own job"), out
    assert "During handling" not in out and out.count("Traceback") == 1, out
