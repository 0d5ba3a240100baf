"""--q_backend / --q-backend: registered by the plugin, visible in every client's --help,
syntax-checked at submit (exit 255, nothing submitted)."""

from __future__ import annotations

import pytest

from tests.support.cluster import Cluster


@pytest.mark.parametrize("client", ["sbatch", "srun", "salloc"])
def test_option_in_help(cluster: Cluster, client: str) -> None:
    out = cluster.as_user(client, "--help").stdout
    assert "--q_backend=NAME" in out
    assert "--q-backend=NAME" in out


def _job_count(cluster: Cluster) -> int:
    return len(cluster.as_user("squeue", "-h", "-t", "all", "-o", "%i").stdout.split())


@pytest.mark.parametrize("value", ["bad name", "1fez", "", "x" * 65, "ibm;fez", "fez/../x"])
def test_bad_value_refused_at_submit(cluster: Cluster, value: str) -> None:
    before = _job_count(cluster)
    proc = cluster.as_user("sbatch", f"--q_backend={value}", "--wrap=true")
    assert proc.returncode == 255, proc.stdout + proc.stderr
    assert "invalid QPU backend name" in proc.stderr
    assert _job_count(cluster) == before


def test_bad_value_refused_by_srun(cluster: Cluster) -> None:
    proc = cluster.as_user("srun", "--q-backend=no way", "true")
    assert proc.returncode != 0
    assert "invalid QPU backend name" in proc.stderr


def test_both_spellings_work(cluster: Cluster) -> None:
    for opt in ("--q_backend=ibm_torino", "--q-backend=ibm_torino"):
        job = cluster.sbatch('echo "QPU_BACKEND=$QPU_BACKEND"\nsrun printenv QPU_BACKEND\n',
                             opt, "-L", "ibm_torino:1")
        assert job.state == "COMPLETED", job.output()
        assert job.output().split() == ["QPU_BACKEND=ibm_torino", "ibm_torino"]


def test_non_qpu_job_untouched(cluster: Cluster) -> None:
    job = cluster.sbatch("env\n")
    assert job.state == "COMPLETED"
    assert "QISKIT_IBM" not in job.output() and "QPU_" not in job.output()
