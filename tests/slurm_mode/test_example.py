"""examples/slurm_mode: the same VQE, one line apart, gives the same answer in both modes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.cluster import Cluster

pytestmark = pytest.mark.slurm

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "slurm_mode"


def test_vqe_both_modes_agree(qpu_cluster: Cluster) -> None:
    wd = qpu_cluster.workdir()
    for f in EXAMPLE.iterdir():
        shutil.copy(f, wd / f.name)
    subprocess.run(["chown", "-R", qpu_cluster.user, str(wd)], check=True)
    ids = {}
    env = {"VQE_ITERATIONS": "4"}
    for mode in ("gres", "slurm"):
        proc = qpu_cluster.as_user("sbatch", "--parsable", f"--output={mode}.out", f"job-{mode}.sh",
                           cwd=wd, env=env)
        assert proc.returncode == 0, proc.stderr
        ids[mode] = proc.stdout.strip().split(";")[0]
    energies = {}
    for mode, job_id in ids.items():
        fields = qpu_cluster.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"},
                                timeout=300)
        out = (wd / f"{mode}.out").read_text()
        assert fields["JobState"] == "COMPLETED", out
        m = re.search(rf"mode {mode}: VQE energy (-?[\d.]+) \(exact ground state (-?[\d.]+)", out)
        assert m, out
        energies[mode] = float(m.group(1))
        exact = float(m.group(2))
    # the gres job held a QPU lane; the slurm-mode job held none (its primitive jobs did)
    # 22.05 prints gres:qpu:1, 24.11+ gres/qpu:1
    assert re.search(r"TresPerNode=gres[:/]qpu:1", " ".join(
        f"{k}={v}" for k, v in qpu_cluster.show_job(ids["gres"]).items()))
    assert "qpu" not in qpu_cluster.show_job(ids["slurm"]).get("TresPerNode", "")
    assert abs(energies["gres"] - energies["slurm"]) < 0.25, energies
    for e in energies.values():
        assert exact - 0.1 < e < exact + 0.6, (energies, exact)
