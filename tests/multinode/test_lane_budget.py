"""A multi-node QPU job keeps its lane budget: `sbatch -N 3 -L ibm_fez:1 --q_backend=ibm_fez`
runs a task on each node, every task submits sampler jobs through its node's proxy (the
primary on the first node, relays on the others), and the emulator never sees more than ONE
active upstream job of that Slurm job -- while every node's task gets its results.

Needs a ``multinode_cluster`` fixture (not defined here: the several-node local cluster,
``scripts/cluster --nodes 3``) giving a Cluster like tests/support/cluster.py's: ``sbatch``,
``wait_state``, ``show_job``, ``vendor_secret()``, and the emulator reachable from this
process (``upstream_reader()`` if it provides one, else ``emulator_url`` or the default
EMULATOR_URL). Optional: ``qpu_args`` (e.g. ``["-p", "quantum"]``) put before the QPU
options. Skipped when the fixture is missing."""

from __future__ import annotations

import time
from typing import Any

import pytest

from qproxy.emulator.reader import EmulatorReader, parse_time, peak_concurrency
from tests.support.cluster import EMULATOR_URL, FINAL

pytestmark = pytest.mark.timeout(900)
NODES = 3
PER_TASK = 2  # sampler jobs each task submits; with one lane the second waits in the primary

PROBE = r'''
import os, sys
from qiskit import QuantumCircuit
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import QiskitRuntimeService, SamplerV2

node = os.environ.get("SLURMD_NODENAME", "?")
service = QiskitRuntimeService()
backend = service.backend(os.environ["QPU_BACKEND"])
qc = QuantumCircuit(2)
qc.h(0)
qc.cx(0, 1)
qc.measure_all()
isa = generate_preset_pass_manager(optimization_level=1, backend=backend).run(qc)
sampler = SamplerV2(mode=backend)
jobs = []
for _ in range(int(sys.argv[1])):
    jobs.append(sampler.run([isa], shots=4000))
    print("submitted", node, jobs[-1].job_id(), flush=True)
for job in jobs:
    counts = job.result()[0].data.meas.get_counts()
    print("result", node, job.job_id(), sum(counts.values()), flush=True)
'''


@pytest.fixture
def mcluster(request: pytest.FixtureRequest) -> Any:
    try:
        return request.getfixturevalue("multinode_cluster")
    except pytest.FixtureLookupError:
        pytest.skip("needs the multinode_cluster fixture (scripts/cluster --nodes 3)")


def _reader(cluster: Any) -> EmulatorReader:
    if hasattr(cluster, "upstream_reader"):
        return cluster.upstream_reader()  # type: ignore[no-any-return]
    return EmulatorReader(getattr(cluster, "emulator_url", EMULATOR_URL), cluster.vendor_secret())


def _mine(reader: EmulatorReader, t0: float, job_id: str, **kw: Any) -> list[dict[str, Any]]:
    tag = f"slurm_job:{job_id}"
    return [j for j in reader.jobs_since(t0, **kw) if tag in (j.get("tags") or [])]


def test_lane_budget_across_nodes(mcluster: Any) -> None:
    reader = _reader(mcluster)
    t0 = time.time() - 1
    script = (f"cat > probe.py <<'EOF'\n{PROBE}\nEOF\n"
              f"srun -N {NODES} --ntasks-per-node=1 python probe.py {PER_TASK}\n")
    args = [*getattr(mcluster, "qpu_args", []), "-N", str(NODES), "-L", "ibm_fez:1",
            "--q_backend=ibm_fez"]
    job = mcluster.sbatch(script, *args, wait=False)

    # while it runs: never more than one of its upstream jobs Queued/Running at a poll
    peak_seen = 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        peak_seen = max(peak_seen, len(_mine(reader, t0, job.id, pending=True)))
        if mcluster.show_job(job.id).get("JobState") in FINAL:
            break
        time.sleep(0.3)
    job.fields = mcluster.wait_state(job.id, FINAL, 120)
    out = job.output()
    assert job.state == "COMPLETED", out
    assert peak_seen <= 1, peak_seen

    # every node's task got its results
    results = [ln.split() for ln in out.splitlines() if ln.startswith("result ")]
    nodes = {r[1] for r in results}
    assert len(nodes) == NODES, out
    assert len(results) == NODES * PER_TASK and all(r[3] == "4000" for r in results), out

    # and, from the device's own records: the job's upstream jobs never overlapped
    mine = _mine(reader, t0, job.id)
    assert len(mine) == NODES * PER_TASK, mine
    spans = []
    for j in mine:
        ts = reader.get(f"/jobs/{j['id']}/metrics")["timestamps"]
        spans.append((parse_time(j["created"]), parse_time(ts["finished"])))
    assert peak_concurrency(spans) == 1, spans
    assert {r[2] for r in results} == {j["id"] for j in mine}
