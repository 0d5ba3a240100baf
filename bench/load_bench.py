"""Benchmark 10: a node under load. N QPU jobs submitted at once across the 3 nodes of the
local several-node cluster (`scripts/cluster up --nodes 3 --accounting`, run here under its
own name, `QPROXY_CLUSTER_NAME`, default `mnload`), all on one emulated device (`fake_fez`
served as `ibm_fez`) behind one licence of 4 lanes (`Licenses=ibm_fez:4`, set with
`QPROXY_CLUSTER_FEZ_LANES=4`, which also makes the nodes' `ibm_fez` resource 4 lanes so a
node's lease never refuses what Slurm admits); each job asks `-L ibm_fez:1` (one lane), so
at most 4 run at once, and makes a few sampler calls one after another. 64 jobs, then 256.

Per run:
- all complete: every Slurm job COMPLETED and printed its results, and the device holds
  exactly jobs x calls completed sampler jobs tagged with our Slurm jobs;
- the lane budget, from the emulator's own record (`EmulatorReader.activity`): the most of
  our upstream jobs active at one instant (created -> finished: queued or running on the
  device, what the lanes policy bounds), which must be <= the licence's 4 lanes; also the
  most executing at once (running -> finished; the emulator itself runs 2 at a time) and
  the mean number executing over the run (2.0 would be the device busy all the time);
- throughput (jobs per minute from the first sbatch to the last job's end) and p50/p99
  turnaround, sbatch -> end (scontrol's SubmitTime/EndTime, 1 s resolution: the end is the
  batch script's, the epilog's ~0.1-0.3 s after it is not in it), which is mostly the wait
  for a licence; and the median start -> end, a job's own time once it has its lane;
- peak node memory: the sum of PSS (and RSS) of the root qproxy processes (spare and job
  proxies, hooks) in each node's namespace, sampled every 0.5 s, the highest node and the
  highest total; and how far the host's MemAvailable fell below its level before the
  submission (the machine is shared: informational).

The client inside each job. Importing qiskit-ibm-runtime costs ~2-3 s CPU per job; 256 of
those on 2 cores would be the benchmark. So the 64-job run uses the unmodified client
(`QiskitRuntimeService()`, `SamplerV2` on an ISA circuit loaded from QPY, no transpiling in
the job) and the 256-job run a stdlib-only client (`LIGHT` below) making the REST calls a
sampler run needs (the client also reads the backend's configuration first): IAM token
exchange, `POST /jobs` (program `sampler`, the same ISA Bell circuit's params in the
client's own JSON encoding, prepared once), polling `GET /jobs/{id}` every 0.25 s,
`GET /jobs/{id}/results`. What is measured is the node side (Slurm, hooks, proxies, lanes),
which sees the same job submissions either way (the real client adds its backend lookups).
`--quick`: 16 jobs (real client) and 32 (light), ~1.5 min; the full section 7-8.5 min on 2
shared cores (two runs measured: 3-4 min each). Throughput is the licence's 4 lanes over a
job's own start -> end (median ~10 s with the real client, its import and backend lookups,
~3 s with the light one); the device is not what limits it (`mean_executing_upstream` ~0.3
and ~1.1 of the emulator's 2 lanes).
`QPROXY_KEEP_CLUSTER=1` leaves the cluster up afterwards (`scripts/cluster down` with the
same QPROXY_CLUSTER_NAME and --nodes 3 --accounting stops it).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import percentile
from qproxy.emulator.reader import peak_concurrency

LANES = 4
CALLS = 3  # sampler calls per job
SHOTS = 100

# Runs in the job as the job user: stdlib only (python -I -S).
LIGHT = r'''
import json, os, sys, time, urllib.parse, urllib.request
api, iam = os.environ["QISKIT_IBM_URL"].rstrip("/"), os.environ["IAM_URL"].rstrip("/")
params, calls = json.load(open(sys.argv[1])), int(sys.argv[2])
form = urllib.parse.urlencode({"grant_type": "urn:ibm:params:oauth:grant-type:apikey",
                               "apikey": os.environ["QISKIT_IBM_TOKEN"]}).encode()
with urllib.request.urlopen(iam + "/identity/token", form, timeout=60) as r:
    bearer = json.load(r)["access_token"]
head = {"Authorization": "Bearer " + bearer, "Service-CRN": os.environ["QISKIT_IBM_INSTANCE"],
        "Content-Type": "application/json", "Accept": "application/json"}
def call(method, path, doc=None):
    body = None if doc is None else json.dumps(doc).encode()
    req = urllib.request.Request(api + path, body, head, method=method)
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())
for _ in range(calls):
    job = call("POST", "/jobs", {"program_id": "sampler", "backend": os.environ["QPU_BACKEND"],
                                 "params": params})
    while True:
        status = call("GET", f"/jobs/{job['id']}")["status"]
        if status in ("Completed", "Failed", "Cancelled"):
            break
        time.sleep(0.25)
    result = call("GET", f"/jobs/{job['id']}/results")
    pubs = result["__value__"]["pub_results"] if status == "Completed" else []
    print("result", job["id"], status, len(pubs), flush=True)
'''

# Runs in the job as the job user: the unmodified client on a circuit transpiled once.
RUNTIME = r'''
import sys
from qiskit import qpy
from qiskit_ibm_runtime import QiskitRuntimeService, SamplerV2
import os
with open(sys.argv[1], "rb") as fh:
    isa = qpy.load(fh)[0]
backend = QiskitRuntimeService().backend(os.environ["QPU_BACKEND"])
sampler = SamplerV2(mode=backend)
for _ in range(int(sys.argv[2])):
    job = sampler.run([isa], shots=int(sys.argv[3]))
    counts = job.result()[0].data.meas.get_counts()
    print("result", job.job_id(), job.status(), sum(counts.values()), flush=True)
'''


def _isa_bell() -> Any:
    from qiskit import QuantumCircuit, transpile
    from qiskit_ibm_runtime.fake_provider import FakeFez

    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return transpile(qc, FakeFez(), optimization_level=1, seed_transpiler=1)


def prepare(workdir: Path) -> None:
    """The job scripts, the ISA circuit as QPY and as sampler params, written once."""
    from qiskit import qpy
    from qiskit_ibm_runtime.utils.json import RuntimeEncoder

    isa = _isa_bell()
    with open(workdir / "bell.qpy", "wb") as fh:
        qpy.dump(isa, fh)
    params = {"pubs": [(isa, None, SHOTS)], "version": 2, "support_qiskit": True,
              "options": {}}
    (workdir / "params.json").write_text(json.dumps(params, cls=RuntimeEncoder))
    (workdir / "light.py").write_text(LIGHT)
    (workdir / "runtime.py").write_text(RUNTIME)
    for name in ("bell.qpy", "params.json", "light.py", "runtime.py"):
        (workdir / name).chmod(0o644)


class MemorySampler(threading.Thread):
    """Every `interval` s: per node, the summed PSS/RSS (kB) of root processes whose command
    line names qproxy, in that node's network namespace; and the host's MemAvailable."""

    def __init__(self, namespaces: dict[str, str], interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.inodes = {os.stat(f"/run/netns/{ns}").st_ino: node
                       for node, ns in namespaces.items()}
        self.interval = interval
        self.stopping = threading.Event()
        self.peak_node_pss = dict.fromkeys(namespaces, 0)
        self.peak_node_rss = dict.fromkeys(namespaces, 0)
        self.peak_total_pss = 0
        self.peak_procs = 0
        self.min_available = mem_available_kb()
        self.samples = 0

    def sample(self) -> None:
        pss = dict.fromkeys(self.peak_node_pss, 0)
        rss = dict.fromkeys(self.peak_node_pss, 0)
        procs = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                node = self.inodes.get(os.stat(f"/proc/{pid}/ns/net").st_ino)
                if node is None or os.stat(f"/proc/{pid}").st_uid != 0:
                    continue
                if b"qproxy" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                    continue
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", rollup, re.M))
            pss[node] += int(fields.get("Pss", 0))
            rss[node] += int(fields.get("Rss", 0))
            procs += 1
        for node in pss:
            self.peak_node_pss[node] = max(self.peak_node_pss[node], pss[node])
            self.peak_node_rss[node] = max(self.peak_node_rss[node], rss[node])
        self.peak_total_pss = max(self.peak_total_pss, sum(pss.values()))
        self.peak_procs = max(self.peak_procs, procs)
        self.min_available = min(self.min_available, mem_available_kb())
        self.samples += 1

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.sample()


def mem_available_kb() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def _epoch(stamp: str) -> float:
    return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))


def load_run(mc: Any, reader: Any, workdir: Path, n: int, client: str) -> dict[str, Any]:
    from tests.multinode.support import NODE_NAMES, USER

    runs = workdir / f"run{n}-{client}"
    runs.mkdir()
    subprocess.run(["chown", USER, str(runs)], check=True)
    py = sys.executable
    cmd = (f"{py} -I -S {workdir}/light.py {workdir}/params.json {CALLS}" if client == "light"
           else f"{py} {workdir}/runtime.py {workdir}/bell.qpy {CALLS} {SHOTS}")
    script = runs / "job.sh"
    script.write_text(f"#!/bin/bash\nexec {cmd}\n")
    script.chmod(0o755)
    # one shell submits them all, round-robin over the nodes: "at once" is the loop's ~10 s
    submit = (f"cd {runs} && for i in $(seq 0 {n - 1}); do "
              f"nodes=({' '.join(NODE_NAMES)}); "
              f"sbatch --parsable -p quantum -L ibm_fez:1 --q_backend=ibm_fez -t 30 "
              f"-w ${{nodes[$((i % {len(NODE_NAMES)}))]}} -o {runs}/out-$i.txt {script} "
              f"|| exit 1; done")
    namespaces = {node: f"qproxy-{os.environ.get('QPROXY_CLUSTER_NAME', 'mnload')}-{node}"
                  for node in NODE_NAMES}
    mem = MemorySampler(namespaces)
    before = statistics.median(mem_available_kb() for _ in range(5))
    mem.sample()
    mem.start()
    t0 = time.time()
    out = mc.exec("bash", "-c", submit, user=USER, timeout=600)
    ids = out.stdout.split()
    if out.returncode != 0 or len(ids) != n:
        mem.stopping.set()
        raise RuntimeError(f"sbatch loop: {len(ids)} of {n} submitted: {out.stderr[-500:]}")
    submitted_s = time.time() - t0
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:
        left = mc.exec("squeue", "-h", "-j", ",".join(ids), "-o", "%i",
                       "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED").stdout.split()
        if not left:
            break
        time.sleep(2)
    mem.stopping.set()
    mem.join()
    if left:
        raise RuntimeError(f"{len(left)} of {n} jobs still queued or running after 20 min")

    shown = mc.exec("scontrol", "-o", "show", "job").stdout
    jobs = {}
    for line in shown.splitlines():
        f = dict(re.findall(r"(\S+?)=(\S*)", line))
        if f.get("JobId") in ids:
            jobs[f["JobId"]] = f
    states = [jobs.get(i, {}).get("JobState", "?") for i in ids]
    turnaround = [_epoch(jobs[i]["EndTime"]) - _epoch(jobs[i]["SubmitTime"])
                  for i in ids if i in jobs]
    ends = [_epoch(jobs[i]["EndTime"]) for i in ids if i in jobs]
    submits = [_epoch(jobs[i]["SubmitTime"]) for i in ids if i in jobs]
    running = [_epoch(jobs[i]["EndTime"]) - _epoch(jobs[i]["StartTime"])
               for i in ids if i in jobs]
    per_node: dict[str, int] = {}
    for i in ids:
        node = jobs.get(i, {}).get("NodeList", "?")
        per_node[node] = per_node.get(node, 0) + 1
    ok_outputs = 0
    for k in range(n):
        text = (runs / f"out-{k}.txt").read_text(errors="replace")
        results = [ln.split() for ln in text.splitlines() if ln.startswith("result ")]
        # light: "result ID Completed 1" (one PUB result); runtime: "result ID DONE 100"
        ok_outputs += len(results) == CALLS and all(
            r[2:] in (["Completed", "1"], ["DONE", str(SHOTS)]) for r in results)
    completed = sum(s == "COMPLETED" for s in states)

    tags = {f"slurm_job:{i}" for i in ids}
    mine = [a for a in reader.activity(t0 - 1) if tags & set(a["tags"])]
    finished = [a for a in mine if a["status"] == "Completed" and a["finished"]]
    active = peak_concurrency([(a["created"], a["finished"]) for a in finished])
    executing = peak_concurrency([(a["running"], a["finished"]) for a in finished])
    wall = max(1.0, max(ends) - min(submits))  # scontrol's clock: both 1 s resolution
    busy = sum(a["finished"] - a["running"] for a in finished) / wall
    all_done = (completed == n and ok_outputs == n and len(finished) == n * CALLS
                and len(mine) == n * CALLS)
    return {
        "bench": f"10. {n} jobs at once",
        "jobs": n, "client": client, "calls_per_job": CALLS, "completed": completed,
        "outputs_ok": ok_outputs, "upstream_jobs": len(finished),
        "submit_s": round(submitted_s, 1), "wall_s": round(wall, 1),
        "jobs_per_min": round(n / wall * 60, 1),
        "p50_turnaround_s": round(percentile(turnaround, 50), 1),
        "p99_turnaround_s": round(percentile(turnaround, 99), 1),
        "p50_start_to_end_s": round(percentile(running, 50), 1),
        "max_active_upstream": active, "max_executing_upstream": executing,
        "mean_executing_upstream": round(busy, 2), "lanes": LANES,
        "per_node_jobs": ",".join(f"{k}:{v}" for k, v in sorted(per_node.items())),
        "peak_node_pss_mb": round(max(mem.peak_node_pss.values()) / 1024, 1),
        "peak_node_rss_mb": round(max(mem.peak_node_rss.values()) / 1024, 1),
        "peak_total_pss_mb": round(mem.peak_total_pss / 1024, 1),
        "peak_qproxy_procs": mem.peak_procs,
        "mem_available_drop_mb": round((before - mem.min_available) / 1024, 1),
        "ratio": round(active / LANES, 3),
        "target": f"all complete, max active <= {LANES} lanes", "ok": all_done and active <= LANES,
    }


def run(work: Path, quick: bool) -> list[dict[str, Any]]:
    # not the tests' cluster (mn): its name is read when tests.multinode.support is imported
    os.environ.setdefault("QPROXY_CLUSTER_NAME", "mnload")
    from tests.multinode.support import CtlEmulatorReader, MultiCluster, script_env

    mc = MultiCluster()
    up = subprocess.run([sys.executable, str(mc.script), "up"],
                        env=dict(script_env(), QPROXY_CLUSTER_FEZ_LANES=str(LANES)),
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                        timeout=600, check=False)
    if up.returncode != 0:
        raise RuntimeError(f"scripts/cluster up --nodes 3 failed: {up.stderr[-2000:]}")
    try:
        reader = CtlEmulatorReader(mc)
        if not reader.wait_warm(300):
            raise RuntimeError("the emulator's lanes did not warm up within 300 s")
        workdir = mc.workdir_for("root")
        workdir.chmod(0o755)
        prepare(workdir)
        sizes = ((16, "runtime"), (32, "light")) if quick else ((64, "runtime"), (256, "light"))
        return [load_run(mc, reader, workdir, n, client) for n, client in sizes]
    finally:
        if not os.environ.get("QPROXY_KEEP_CLUSTER"):
            subprocess.run([sys.executable, str(mc.script), "down"], env=script_env(),
                           check=False, timeout=300, stdout=subprocess.DEVNULL)
