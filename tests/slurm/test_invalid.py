"""A syntactically fine but unusable request fails the JOB with a clear message on its
output; the node stays idle (a failing prolog would drain it)."""

from __future__ import annotations

from tests.support.cluster import Cluster


def _fails_clearly(cluster: Cluster, message: str, *args: str) -> None:
    job = cluster.sbatch("echo SHOULD-NOT-RUN\n", *args)
    assert job.state == "FAILED", job.fields
    out = job.output()
    assert "SHOULD-NOT-RUN" not in out
    assert message in out, out
    assert cluster.node_state() == "idle"
    assert not (cluster.run_dir / job.id).exists()


def test_unknown_backend(cluster: Cluster) -> None:
    _fails_clearly(
        cluster,
        "unknown QPU backend 'ibm_nowhere' (this cluster has: ibm_fez, ibm_onprem, ibm_torino)",
        "--q_backend=ibm_nowhere",
        "--gres=qpu:1",
    )


def test_no_lanes_requested(cluster: Cluster) -> None:
    _fails_clearly(
        cluster,
        "needs QPU lanes from Slurm: add --gres=qpu:N or -L ibm_fez:N",
        "--q_backend=ibm_fez",
    )


def test_more_lanes_than_device(cluster: Cluster) -> None:
    _fails_clearly(
        cluster,
        "job asked for 2 lanes of ibm_torino, which has only 1",
        "--q_backend=ibm_torino",
        "--gres=qpu:2",
    )


def test_licence_of_other_backend(cluster: Cluster) -> None:
    _fails_clearly(cluster, "-L ibm_fez:N", "--q_backend=ibm_fez", "-L", "ibm_torino:1")


def test_slurm_refuses_over_asking(cluster: Cluster) -> None:
    for args in (["--gres=qpu:9"], ["-L", "ibm_fez:3"]):
        proc = cluster.as_user("sbatch", "--q_backend=ibm_fez", *args, "--wrap=true")
        assert proc.returncode != 0, args


def test_srun_step_fails_clearly(cluster: Cluster) -> None:
    proc = cluster.as_user("srun", "--q_backend=ibm_nowhere", "--gres=qpu:1", "true")
    assert proc.returncode != 0
    assert "unknown QPU backend 'ibm_nowhere'" in proc.stderr
    assert cluster.node_state() == "idle"
