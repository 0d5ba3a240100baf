"""Both ways a centre maps lanes to Slurm: node-local GRES (--gres=qpu:N) and cluster-wide
licences (-L <backend>:N). The lane count the job gets is what Slurm allocated."""

from __future__ import annotations

import pytest

from tests.support.cluster import Cluster


@pytest.mark.parametrize(
    ("args", "backend", "lanes"),
    [
        (["--gres=qpu:1"], "ibm_fez", "1"),
        (["--gres=qpu:2"], "ibm_fez", "2"),
        (["-L", "ibm_fez:2"], "ibm_fez", "2"),
        (["-L", "ibm_torino:1"], "ibm_torino", "1"),
    ],
)
def test_mapping(cluster: Cluster, args: list[str], backend: str, lanes: str) -> None:
    job = cluster.sbatch('echo "got $QPU_BACKEND $QPU_LANES"\n', f"--q_backend={backend}", *args)
    assert job.state == "COMPLETED", job.output()
    assert f"got {backend} {lanes}" in job.output()


def test_job_env_proves_nothing(cluster: Cluster) -> None:
    """A user-set SLURM_JOB_LICENSES / QPU_LANES does not buy lanes."""
    job = cluster.sbatch(
        'echo "got $QPU_LANES"\n',
        "--q_backend=ibm_fez",
        "--gres=qpu:1",
        env={"SLURM_JOB_LICENSES": "ibm_fez:2", "QPU_LANES": "2"},
    )
    assert "got 1" in job.output()


def test_srun_only_job(cluster: Cluster) -> None:
    proc = cluster.as_user("srun", "--q_backend=ibm_fez", "--gres=qpu:1", "printenv",
                           "QPU_BACKEND", "QPU_LANES")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ibm_fez", "1"]


def test_salloc_job(cluster: Cluster) -> None:
    """PrologFlags=Alloc: the proxy is up for an interactive allocation's steps too."""
    proc = cluster.as_user("salloc", "-Q", "--q_backend=ibm_torino", "-L", "ibm_torino:1",
                           "srun", "printenv", "QPU_BACKEND")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ibm_torino"]
