"""The on-prem system's lanes across the 3-node cluster: one QPU job (`-N 3 -L ibm_onprem:2`)
whose 4 tasks each submit a sampler job through their node's proxy (the primary, or a relay
to it) while the system is reserved for others. Each submission the proxy takes is shown to
its task as Queued with the reason (the system answers 423: the job does not exist there
yet); once the reservation ends the system never holds more than 2 of the job's upstream
jobs (the job's lanes, read from the system's own records at every poll), and every task
gets its result."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pytest

from tests.multinode.support import MultiCluster
from tests.support.cluster import FINAL

pytestmark = pytest.mark.timeout(900)
DEVICE = "fake_marrakesh"
TASKS = 4
LANES = 2

PROBE = r'''
import os
from qiskit import QuantumCircuit
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import QiskitRuntimeService, SamplerV2

node = os.environ.get("SLURMD_NODENAME", "?")
backend = QiskitRuntimeService().backend(os.environ["QPU_BACKEND"])
qc = QuantumCircuit(2)
qc.h(0)
qc.cx(0, 1)
qc.measure_all()
isa = generate_preset_pass_manager(optimization_level=1, backend=backend).run(qc)
job = SamplerV2(mode=backend).run([isa], shots=4000)
print("submitted", node, job.job_id(), job.status(), flush=True)
counts = job.result()[0].data.meas.get_counts()
print("result", node, job.job_id(), sum(counts.values()), flush=True)
'''

# run inside the controller's namespace (the system listens on the controller's address)
SYSTEM = r'''
import json, sys, urllib.request
url, key, op = sys.argv[1], sys.argv[2], sys.argv[3]
h = {"Authorization": "apikey " + key, "Content-Type": "application/json"}
if op == "jobs":
    req = urllib.request.Request(url + "/v1/jobs", headers=h)
else:
    body = json.dumps({"locked": op == "lock"}).encode()
    req = urllib.request.Request(url + "/admin/backends/%s/reservation" % sys.argv[4],
                                 data=body, headers=h, method="PUT")
print(urllib.request.urlopen(req, timeout=30).read().decode())
'''


def system(cluster: MultiCluster, op: str) -> Any:
    out = cluster.exec(sys.executable, "-c", SYSTEM, cluster.settings.emulator_url,
                       cluster.vendor_secret(), op, DEVICE, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def on_device(cluster: MultiCluster) -> int:
    return sum(1 for j in system(cluster, "jobs")["jobs"] if j["backend"] == DEVICE)


def test_onprem_lanes_across_nodes(multinode_cluster: MultiCluster) -> None:
    c = multinode_cluster
    system(c, "lock")
    try:
        job = c.sbatch(f"cat > probe.py <<'EOF'\n{PROBE}\nEOF\n"
                       f"srun -N 3 -n {TASKS} python probe.py\n",
                       *getattr(c, "qpu_args", []), "-N", "3", "-L", f"ibm_onprem:{LANES}",
                       "--q_backend=ibm_onprem", wait=False)
        deadline = time.monotonic() + 300
        while job.output().count("submitted") < LANES:
            assert time.monotonic() < deadline, job.output()
            assert c.show_job(job.id).get("JobState") not in FINAL, job.output()
            assert on_device(c) == 0  # reserved: nothing reaches the system
            time.sleep(0.5)
    finally:
        system(c, "unlock")
    peak = 0
    deadline = time.monotonic() + 600
    while c.show_job(job.id).get("JobState") not in FINAL:
        assert time.monotonic() < deadline, job.output()
        peak = max(peak, on_device(c))
        time.sleep(0.3)
    job.fields = c.wait_state(job.id, FINAL, 120)
    out = job.output()
    assert job.state == "COMPLETED", out
    assert peak <= LANES, peak
    submitted = [ln.split() for ln in out.splitlines() if ln.startswith("submitted ")]
    results = [ln.split() for ln in out.splitlines() if ln.startswith("result ")]
    assert len(results) == TASKS and all(r[3] == "4000" for r in results), out
    assert len({r[1] for r in results}) == 3, out  # every node's tasks
    assert sum(1 for s in submitted if s[3] == "QUEUED") >= LANES, out
    c.wait_gone(job.id)
    assert on_device(c) == 0  # nothing of the job holds a lane after its epilog
