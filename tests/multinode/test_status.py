"""`qproxy status` on the nodes of a running 2-node QPU job: the primary's node shows the
job's lease, the relay's node the relay (no lease), and the third node -- which shares this
host's PID space and the same config path in the test cluster -- neither the job's proxies as
its own nor as orphans (`qproxy hook reap` there would otherwise stop them)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from tests.multinode.support import NODE_NAMES, MultiCluster


def _status(mn: MultiCluster, node: str) -> dict[str, Any]:
    conf = mn.state / "node" / "qproxy.toml"  # the node's own dir, as the node sees it
    out = mn.exec(sys.executable, "-m", "qproxy", "status", "--config", str(conf), "--json",
                  "--no-devices", node=node, timeout=60)
    assert out.returncode in (0, 1), out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_status_on_each_node_of_a_two_node_job(mn: MultiCluster) -> None:
    job = mn.submit("srun -N 2 -n 2 bash -c 'touch started.$(hostname); sleep 40'\n",
                    "-p", "quantum", "-N", "2", "-w", "qnode1,qnode2", "-L", "ibm_fez:2",
                    "--q_backend=ibm_fez", wait=False)
    try:
        mn.wait_state(job.id, {"RUNNING"}, timeout=60)
        deadline = time.monotonic() + 60
        while not all((job.workdir / f"started.{n}").exists() for n in ("qnode1", "qnode2")):
            assert time.monotonic() < deadline, job.output()
            time.sleep(0.5)
        docs = {n: _status(mn, n) for n in NODE_NAMES}
        primary = next(p for p in docs["qnode1"]["proxies"] if p["job_id"] == job.id)
        assert primary["role"] == "primary" and primary["alive"] and primary["lanes_held"] == 2
        assert primary["lanes_in_use"] == 0 and primary["port"], primary
        relay = next(p for p in docs["qnode2"]["proxies"] if p["job_id"] == job.id)
        assert relay["role"] == "relay" and relay["alive"] and relay["lanes_held"] == 0, relay
        assert relay["primary"].rsplit(":", 1)[1].isdigit(), relay  # ADDR:PORT
        fez = {n: next(lv for lv in d["leases"] if lv["resource"] == "ibm_fez")["held"]
               for n, d in docs.items()}
        assert fez == {"qnode1": {job.id: 2}, "qnode2": {}, "qnode3": {}}, fez
        assert not [p for p in docs["qnode3"]["proxies"] if p["job_id"] == job.id]
        for node, doc in docs.items():
            assert doc["slurm"] == "ok" and not [
                q for q in doc["problems"] if q["job_id"] == job.id], (node, doc["problems"])
    finally:
        mn.cancel(job.id)
