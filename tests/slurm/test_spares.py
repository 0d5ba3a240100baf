"""Spare proxies on the real cluster: a QPU job's proxy is the node's pre-started spare
(claimed by the prolog), the epilog stops it like any proxy, and the node keeps one spare
ready for the next job. Mechanics and failure paths: tests/proxy/test_spare.py."""

from __future__ import annotations

import json
import time

from qproxy.proxy.process import alive
from qproxy.slurm import spares as spare
from qproxy.slurm.proxyproc import is_our_proxy
from tests.support.cluster import Cluster


def _ready_spares(cluster: Cluster) -> list[tuple[int, str]]:
    return [(pid, sid) for path, pid, sid in spare.listing(cluster.run_dir)
            if path.name.endswith(".sock")]


def _wait(cond, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_jobs_get_the_spare_and_a_new_one_follows(cluster: Cluster) -> None:
    # the first QPU job on the node leaves a spare behind if there was none
    cluster.sbatch("srun printenv QPU_BACKEND\n", "--q_backend=ibm_fez", "--gres=qpu:1")
    _wait(lambda: _ready_spares(cluster))
    [(spare_pid, spare_id)] = _ready_spares(cluster)
    job = cluster.sbatch("sleep 3; srun printenv QPU_BACKEND\n", "--q_backend=ibm_fez",
                         "--gres=qpu:1", wait=False)
    cluster.wait_state(job.id, {"RUNNING"})
    _wait(lambda: (cluster.run_dir / job.id / "record.json").exists(), 10)
    record = json.loads((cluster.run_dir / job.id / "record.json").read_text())
    assert (record["pid"], record["spare"]) == (spare_pid, spare_id)
    assert is_our_proxy(spare_pid, job.id, spare_id)
    # the claimed spare started its successor for the next job
    _wait(lambda: [s for s in _ready_spares(cluster) if s[0] != spare_pid])
    cluster.wait_state(job.id, {"COMPLETED"}, timeout=60)
    assert job.output().strip().endswith("ibm_fez")
    cluster.wait_gone(job.id)
    assert not alive(spare_pid)
    assert len(_ready_spares(cluster)) == 1
