"""The user flows in examples/ succeed end to end as the unprivileged job user: a primitive
job (qrun), the same on the on-prem system, an unmodified qiskit-ibm-runtime program, and a
three-job workflow."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.support.cluster import FINAL, Cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _copy(cluster: Cluster, name: str) -> Path:
    wd = cluster.workdir() / name
    shutil.copytree(EXAMPLES / name, wd)
    subprocess.run(["chown", "-R", cluster.user, str(wd)], check=True)
    return wd


def _job(cluster: Cluster, wd: Path) -> str:
    return _submitted(cluster, wd)[1]


def _submitted(cluster: Cluster, wd: Path) -> tuple[str, str]:
    """(Slurm job id, its output) of job.sh in WD, once COMPLETED."""
    proc = cluster.as_user("sbatch", "--parsable", "-o", "out.txt", "job.sh", cwd=wd)
    assert proc.returncode == 0, proc.stderr
    fields = cluster.wait_state(proc.stdout.strip(), FINAL, timeout=300)
    out = (wd / "out.txt").read_text()
    assert fields["JobState"] == "COMPLETED", out
    return proc.stdout.strip(), out


def test_primitive(qpu_cluster: Cluster) -> None:
    out = _job(qpu_cluster, _copy(qpu_cluster, "primitive"))
    counts = dict(re.findall(r"'(\d\d)': (\d+)", out.split("sample counts:")[1].splitlines()[0]))
    assert int(counts["00"]) + int(counts["11"]) > 900, out
    zz, xx = map(float, re.search(r"<ZZ>, <XX>: \[(\S+), (\S+)\]", out).groups())  # type: ignore[union-attr]
    assert zz > 0.8 and xx > 0.8, out


def test_onprem(qpu_cluster: Cluster) -> None:
    """examples/onprem: primitive/'s payloads on ibm_onprem (the Quantum System kind)."""
    wd = qpu_cluster.workdir()
    for name in ("primitive", "onprem"):
        shutil.copytree(EXAMPLES / name, wd / name)
    subprocess.run(["chown", "-R", qpu_cluster.user, str(wd)], check=True)
    job_id, out = _submitted(qpu_cluster, wd / "onprem")
    assert "QPU: ibm_onprem (1 lane(s))" in out, out
    zz, xx = map(float, re.search(r"<ZZ>, <XX>: \[(\S+), (\S+)\]", out).groups())  # type: ignore[union-attr]
    assert zz > 0.8 and xx > 0.8, out
    qpu_cluster.wait_gone(job_id)
    assert qpu_cluster.usage(job_id)  # booked by the epilog


def test_hybrid_unmodified_client(qpu_cluster: Cluster) -> None:
    out = _job(qpu_cluster, _copy(qpu_cluster, "hybrid"))
    m = re.search(r"VQE energy (\S+) \(exact ground state (\S+)\)", out)
    assert m, out
    assert float(m.group(1)) < float(m.group(2)) + 0.3, out


def test_workflow(qpu_cluster: Cluster) -> None:
    wd = _copy(qpu_cluster, "workflow")
    proc = qpu_cluster.as_user("./submit.sh", cwd=wd)
    assert proc.returncode == 0, proc.stderr
    pre, quantum, post = proc.stdout.split()
    qpu_cluster.wait_state(post, FINAL, timeout=300)
    for job_id in (pre, quantum, post):
        assert qpu_cluster.show_job(job_id)["JobState"] == "COMPLETED", (wd / "quantum.out")
    out = (wd / "post.out").read_text()
    p = float(re.search(r"P\(all equal\) = (\S+)", out).group(1))  # type: ignore[union-attr]
    assert p > 0.8, out
    # only the quantum step held the QPU
    assert qpu_cluster.usage(quantum) and not qpu_cluster.usage(pre) and not qpu_cluster.usage(post)
