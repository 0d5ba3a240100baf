"""Lane limits hold: Slurm keeps over-subscribing jobs pending (GRES and licences), and the
node's lease refuses a device's lanes twice even where the GRES count would allow it."""

from __future__ import annotations

from tests.support.cluster import Cluster


def test_licence_lanes_make_jobs_wait(cluster: Cluster) -> None:
    first = cluster.sbatch("sleep 30\n", "--q_backend=ibm_fez", "-L", "ibm_fez:2", wait=False)
    try:
        cluster.wait_state(first.id, {"RUNNING"})
        second = cluster.sbatch("true\n", "--q_backend=ibm_fez", "-L", "ibm_fez:1", wait=False)
        cluster.wait_state(second.id, {"PENDING"}, timeout=15, reason="Licenses")
        cluster.as_user("scancel", first.id)
        cluster.wait_state(second.id, {"COMPLETED"}, timeout=60)
    finally:
        cluster.as_user("scancel", first.id)


def test_gres_lanes_make_jobs_wait(cluster: Cluster) -> None:
    first = cluster.sbatch("sleep 30\n", "--gres=qpu:3", wait=False)  # all node's lanes
    second = None
    try:
        cluster.wait_state(first.id, {"RUNNING"})
        second = cluster.sbatch("true\n", "--q_backend=ibm_torino", "--gres=qpu:1", wait=False)
        cluster.wait_state(second.id, {"PENDING"}, timeout=15, reason="Resources")
        cluster.as_user("scancel", first.id)
        cluster.wait_state(second.id, {"COMPLETED"}, timeout=60)
    finally:
        cluster.as_user("scancel", first.id)
        if second:
            cluster.as_user("scancel", second.id)


def test_lease_refuses_busy_device(cluster: Cluster) -> None:
    """GRES qpu:3 is shared by ibm_fez (2 lanes) and ibm_torino (1): a second ibm_fez job
    fits Slurm's count but not the device; it fails clearly and the node stays up."""
    first = cluster.sbatch("sleep 30\n", "--q_backend=ibm_fez", "--gres=qpu:2", wait=False)
    try:
        cluster.wait_state(first.id, {"RUNNING"})
        second = cluster.sbatch("echo SHOULD-NOT-RUN\n", "--q_backend=ibm_fez", "--gres=qpu:1")
        assert second.state == "FAILED"
        assert "QPU ibm_fez is busy: 2 of its 2 lanes are in use" in second.output()
        assert "SHOULD-NOT-RUN" not in second.output()
    finally:
        cluster.as_user("scancel", first.id)
    assert cluster.node_state() == "idle"
