"""`qproxy usage` over the per-node usage files of the 3-node cluster, joined with sacct: a
3-node QPU job (one primary line, two relay lines, each with the job's lane count) counts as
one job with its lanes once, its QPU seconds are what the upstream metered for its jobs, its
lane time is Slurm's ElapsedRaw x lanes; CSV/JSON parse, the plot is a PNG of those series."""

from __future__ import annotations

import csv
import io
import json
import sys
import time

from tests.multinode.support import NODE_NAMES, CtlEmulatorReader, MultiCluster

PROGRAM = """
import os
from qiskit import QuantumCircuit
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import QiskitRuntimeService, SamplerV2
backend = QiskitRuntimeService().backend(os.environ["QPU_BACKEND"])
qc = QuantumCircuit(2); qc.h(0); qc.cx(0, 1); qc.measure_all()
isa = generate_preset_pass_manager(optimization_level=1, backend=backend).run(qc)
job = SamplerV2(mode=backend).run([isa], shots=2000)
job.result()
print("done", job.job_id(), flush=True)
"""
RUN = "export PYTHONWARNINGS=ignore\n"


def _usage(mn: MultiCluster, *args: str) -> str:
    """`qproxy usage` as root in the controller's namespace (where sacct reaches slurmdbd)
    over the directory holding every node's files."""
    out = mn.exec(sys.executable, "-m", "qproxy", "usage", str(mn.state / "nodes"), *args,
                  timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_usage_over_per_node_files(mn: MultiCluster) -> None:
    t0 = time.time() - 1
    wd = mn.workdir_for("qpuuser")
    (wd / "program.py").write_text(PROGRAM)
    (wd / "program.py").chmod(0o644)
    multi = mn.submit(RUN + "srun -N 3 -n 3 python3 " + str(wd / "program.py") + "\n",
                      "-p", "quantum", "-N", "3", "-L", "ibm_fez:2", "--q_backend=ibm_fez",
                      "-A", "physics")
    assert multi.state == "COMPLETED", multi.output()
    assert multi.output().count("done ") == 3, multi.output()
    single = mn.submit(RUN + "python3 " + str(wd / "program.py") + "\n", "-p", "quantum",
                       "-w", "qnode2", "-L", "ibm_fez:1", "--q_backend=ibm_fez",
                       "-A", "chemistry")
    assert single.state == "COMPLETED", single.output()
    lines = {n: mn.wait_usage(n, multi.id) for n in NODE_NAMES}
    assert sorted(str(ln.get("role")) for ln in lines.values()) == ["primary", "relay", "relay"]
    assert all(ln["lanes"] == 2 for ln in lines.values())  # why summing lanes would be wrong
    mn.wait_usage("qnode2", single.id)
    acct = {j.id: mn.wait_sacct(j.id) for j in (multi, single)}

    doc = json.loads(_usage(mn, "--json", "--by", "account", "--since", str(t0),
                            "--plot", str(wd / "usage.png"), "--bucket", "minute"))
    assert doc["sacct"] == "joined" and len(doc["files"]) == 3, doc["files"]
    runs = {r["job_id"]: r for r in doc["runs"]}
    m, s = runs[multi.id], runs[single.id]
    assert (m["nodes"], m["lanes"], m["upstream_jobs"], m["account"]) == (3, 2, 3, "physics")
    assert (s["nodes"], s["lanes"], s["upstream_jobs"], s["account"]) == (1, 1, 1, "chemistry")
    for run, job in ((m, multi), (s, single)):
        assert run["elapsed_from"] == "sacct"
        assert run["lane_seconds"] == run["lanes"] * int(acct[job.id]["ElapsedRaw"]), run
        assert run["user"] == "qpuuser"
    # the QPU seconds are what the upstream metered for each job's upstream jobs
    reader = CtlEmulatorReader(mn)
    metered: dict[str, float] = {multi.id: 0.0, single.id: 0.0}
    for job in reader.jobs_since(t0):
        tags = {t for t in job.get("tags") or [] if isinstance(t, str)}  # type: ignore[union-attr]
        for sid in metered:
            if f"slurm_job:{sid}" in tags:
                usage = reader.get(f"/jobs/{job['id']}/metrics")["usage"]  # type: ignore[index]
                metered[sid] += float(usage["quantum_seconds"])
    assert metered[multi.id] > 0 and metered[single.id] > 0, metered
    assert abs(m["qpu_seconds"] - metered[multi.id]) < 1e-3, (m, metered)
    assert abs(s["qpu_seconds"] - metered[single.id]) < 1e-3, (s, metered)
    # rows and total add up the runs of the period
    for row in doc["rows"]:
        mine = [r for r in doc["runs"] if r["account"] == row["account"]]
        assert row["jobs"] == len(mine)
        assert abs(row["qpu_seconds"] - sum(r["qpu_seconds"] for r in mine)) < 1e-2
    assert doc["total"]["jobs"] == len(doc["runs"])
    assert abs(doc["total"]["lane_hours"] * 3600
               - sum(r["lane_seconds"] for r in doc["runs"])) < 0.1

    plot = doc["plot"]
    qpu_drawn = sum(sum(v) for v in plot["qpu_seconds"].values())
    assert abs(qpu_drawn - sum(r["qpu_seconds"] for r in doc["runs"])) < 1e-2, plot
    assert {"physics", "chemistry"} <= set(plot["qpu_seconds"]), plot
    assert all(u is None or 0 <= u <= 1 for u in plot["utilisation"]), plot
    png = (wd / "usage.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    rows = list(csv.DictReader(io.StringIO(_usage(mn, "--csv", "--by", "user,resource",
                                                  "--since", str(t0)))))
    mine = [r for r in rows if r["user"] == "qpuuser" and r["resource"] == "ibm_fez"]
    assert mine and int(mine[0]["jobs"]) >= 2, rows
    table = _usage(mn, "--by", "account", "--since", str(t0))
    assert "TOTAL" in table and "sacct joined" in table, table
