"""Spare proxies on the real cluster: each QPU job's proxy is forked by the node's pre-started
spare (claimed by the prolog), the epilog stops it like any proxy, and the spare stays ready
for the next jobs. Mechanics and failure paths: tests/proxy/test_spare.py."""

from __future__ import annotations

import json
import time

from qproxy.node import sparepool
from qproxy.node.process import alive, is_our_proxy
from tests.support.cluster import Cluster


def _ready_spares(cluster: Cluster) -> list[tuple[int, str]]:
    return [(pid, sid) for path, pid, sid in sparepool.listing(cluster.run_dir)
            if path.name.endswith(".sock")]


def _wait(cond, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_jobs_proxies_are_forked_by_the_nodes_spare(cluster: Cluster) -> None:
    # the first QPU job on the node leaves a spare behind if there was none
    cluster.sbatch("srun printenv QPU_BACKEND\n", "--q_backend=ibm_fez", "--gres=qpu:1")
    _wait(lambda: _ready_spares(cluster))
    [(spare_pid, spare_id)] = _ready_spares(cluster)
    jobs = [cluster.sbatch("sleep 3; srun printenv QPU_BACKEND\n", "--q_backend=ibm_fez",
                           "--gres=qpu:1", wait=False) for _ in range(2)]
    records = []
    for job in jobs:
        cluster.wait_state(job.id, {"RUNNING"})
        _wait(lambda job=job: (cluster.run_dir / job.id / "record.json").exists(), 10)
        record = json.loads((cluster.run_dir / job.id / "record.json").read_text())
        # forked by the spare: its own process, recognised by the spare's id and start time
        assert record["spare"] == spare_id and record["pid"] != spare_pid
        assert is_our_proxy(record["pid"], job.id, spare_id, record["start_ticks"])
        assert not is_our_proxy(spare_pid, job.id, spare_id, record["start_ticks"])
        records.append(record)
    assert records[0]["pid"] != records[1]["pid"]
    for job, record in zip(jobs, records, strict=True):
        cluster.wait_state(job.id, {"COMPLETED"}, timeout=60)
        assert job.output().strip().endswith("ibm_fez")
        cluster.wait_gone(job.id)
        assert not alive(record["pid"])
    # the same spare stays for the next jobs
    assert _ready_spares(cluster) == [(spare_pid, spare_id)]
