"""QPU jobs on a several-node cluster: every node can run them (its own proxy on its own
loopback, its own usage line), salloc + srun, standalone srun, job arrays within the licence
budget, heterogeneous jobs and a two-node QPU job (what it does today)."""

from __future__ import annotations

import time

import pytest

from tests.multinode.support import NODE_NAMES, USER, MultiCluster

BACKENDS = ('python -c "from qiskit_ibm_runtime import QiskitRuntimeService; '
            'print(QiskitRuntimeService().backends())"')
QPU = ["-p", "quantum", "-L", "ibm_fez:1", "--q_backend=ibm_fez"]


@pytest.mark.parametrize("node", NODE_NAMES)
def test_qpu_job_on_each_node(mn: MultiCluster, node: str) -> None:
    job = mn.submit(f'hostname\necho "url=$QISKIT_IBM_URL"\n{BACKENDS}\n', *QPU, "-w", node)
    out = job.output()
    assert job.state == "COMPLETED", out
    lines = out.splitlines()
    assert lines[0] == node, out  # the node's own UTS namespace
    assert "url=http://127.0.0.1:" in out and "IBMBackend('ibm_fez')" in out, out
    usage = mn.wait_usage(node, job.id)  # booked on that node, nowhere else
    assert usage["resource"] == "ibm_fez" and usage["lanes"] == 1, usage
    assert all(not mn.node_usage(other, job.id) for other in NODE_NAMES if other != node)


def test_proxy_is_node_local(mn: MultiCluster) -> None:
    """A job's proxy listens on its node's 127.0.0.1: another node cannot reach it."""
    job = mn.submit(f'echo "$QISKIT_IBM_URL" > url.txt\n{BACKENDS}\nsleep 20\n', *QPU,
                    "-w", "qnode1", wait=False)
    try:
        mn.wait_state(job.id, {"RUNNING"}, timeout=60)
        url, deadline = "", time.monotonic() + 60
        while not url and time.monotonic() < deadline:
            url = job.output("url.txt").strip()
            time.sleep(0.2)
        assert url.startswith("http://127.0.0.1:"), url
        probe = ("import sys, urllib.request\ntry:\n    urllib.request.urlopen(sys.argv[1], "
                 "timeout=3)\n    print('reached')\nexcept Exception as exc:\n"
                 "    print('refused', type(exc).__name__)\n")
        there = mn.exec("python3", "-c", probe, url + "/backends", node="qnode1")
        other = mn.exec("python3", "-c", probe, url + "/backends", node="qnode2")
        assert "reached" in there.stdout or "HTTPError" in there.stdout, there
        assert "refused URLError" in other.stdout, other
    finally:
        mn.cancel(job.id)


def test_salloc_srun_and_standalone_srun(mn: MultiCluster) -> None:
    wd = mn.workdir_for(USER)
    salloc = mn.exec("salloc", *QPU, "-w", "qnode2", "srun", "bash", "-c",
                     f"hostname; {BACKENDS}", user=USER, cwd=wd, timeout=180)
    assert salloc.returncode == 0, salloc.stderr
    assert salloc.stdout.splitlines()[0] == "qnode2", salloc.stdout
    assert "IBMBackend('ibm_fez')" in salloc.stdout, salloc.stdout
    srun = mn.exec("srun", "-p", "quantum", "-L", "ibm_torino:1", "--q_backend=ibm_torino",
                   "-w", "qnode3", "bash", "-c", f"hostname; {BACKENDS}", user=USER, cwd=wd,
                   timeout=180)
    assert srun.returncode == 0, srun.stderr
    assert srun.stdout.splitlines()[0] == "qnode3", srun.stdout
    assert "IBMBackend('ibm_torino')" in srun.stdout, srun.stdout


def test_job_array_within_licence_budget(mn: MultiCluster) -> None:
    """4 tasks, ibm_fez has 2 licences: never more than 2 run at once, all succeed."""
    job = mn.submit(f"{BACKENDS}\nsleep 4\n", *QPU, "-a", "1-4", "-o", "/dev/null",
                    wait=False)
    rows: list[dict[str, str]] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        rows = mn.sacct(job.id, "JobID,State,Start,End,AllocTRES", "-X")
        if len(rows) == 4 and all(r["End"] not in ("", "Unknown") for r in rows):
            break
        time.sleep(1)
    assert len(rows) == 4 and all(r["State"] == "COMPLETED" for r in rows), rows
    assert all("license/ibm_fez=1" in r["AllocTRES"] for r in rows), rows
    events = sorted([(r["Start"], 1) for r in rows] + [(r["End"], -1) for r in rows],
                    key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak <= 2, rows


def test_heterogeneous_job(mn: MultiCluster) -> None:
    """The SPANK option (--q_backend) is job-wide, so it reaches every component, but -L
    (the lanes) only the component that asked. The QPU component's steps get the proxy; a
    step on the classical component runs without QPU variables (no failure)."""
    script = ('echo "batch on $(hostname) url=${QISKIT_IBM_URL:-none}"\n'
              "srun --het-group=0 bash -c 'echo \"g0 $(hostname) ${QISKIT_IBM_URL:-none}\"'\n"
              "srun --het-group=1 bash -c 'echo \"g1 $(hostname) ${QISKIT_IBM_URL:-none} "
              "${QPU_BACKEND:-none}\"'\n"
              "echo g1rc=$?\n")
    job = mn.submit(script, *QPU, "-w", "qnode1", ":", "-p", "classical", "-w", "qnode3")
    out = job.output()
    assert job.state == "COMPLETED", out
    assert "batch on qnode1 url=http://127.0.0.1:" in out, out
    assert "g0 qnode1 http://127.0.0.1:" in out, out
    assert "g1 qnode3 none none" in out and "g1rc=0" in out, out
    assert "needs QPU lanes" not in out, out
    # and a heterogeneous job in which no component holds lanes is still refused clearly
    job = mn.submit("srun --het-group=1 true\necho g1rc=$?\n", "-p", "quantum",
                    "--q_backend=ibm_fez", "-w", "qnode1", ":", "-p", "classical",
                    "-w", "qnode3")
    out = job.output()
    assert "needs QPU lanes from Slurm" in out and "g1rc=0" not in out, out


def test_two_node_qpu_job_one_primary_one_relay(mn: MultiCluster) -> None:
    """`sbatch -N 2 -L ibm_fez:1 --q_backend=ibm_fez`: the first node's prolog starts the
    job's primary proxy (vendor key, the job's one lane), the other node's a relay to it
    (no key); task init works on both nodes and each books a usage line with its role.
    The lane budget itself across nodes: test_lane_budget.py."""
    job = mn.submit("srun -l bash -c 'echo \"$(hostname) $QISKIT_IBM_URL lanes=$QPU_LANES\"; "
                    f"{BACKENDS}'\n", "-N", "2", *QPU)
    out = job.output()
    assert job.state == "COMPLETED", out
    hosts = sorted({ln.split()[1] for ln in out.splitlines() if "lanes=" in ln})
    assert len(hosts) == 2, out
    assert out.count("IBMBackend('ibm_fez')") == 2, out
    assert out.count("lanes=1") == 2, out
    roles = {mn.wait_usage(node, job.id).get("role") for node in hosts}
    assert roles == {"primary", "relay"}, roles


def test_gres_qpu_is_attached_to_its_node(mn: MultiCluster) -> None:
    """The GRES mapping is a QPU attached to particular nodes (qnode1 here holds the qpu
    GRES, 3 lanes; the others none): GRES jobs all run on qnode1, and one more than its
    lanes waits (reason Resources) while the other nodes have nothing allocated. The
    licence mapping is the cluster-wide one (test_accounting: more jobs than lanes pend on
    Licenses)."""
    ids = [mn.submit("sleep 60\n", "-p", "quantum", "--gres=qpu:1", "-o", "/dev/null",
                     wait=False).id for _ in range(4)]
    try:
        running = [mn.wait_state(i, {"RUNNING"}, timeout=60) for i in ids[:3]]
        assert {f["NodeList"] for f in running} == {"qnode1"}, running
        # Reason is "None" until the scheduler has looked at the job (CI caught that)
        mn.wait_state(ids[3], {"PENDING"}, timeout=30, reason="Resources")
        # free CPUs elsewhere ("plnd": backfill has planned a pending job there, still free)
        others = mn.exec("sinfo", "-h", "-n", "qnode2,qnode3", "-o", "%t").stdout.split()
        assert others and not set(others) & {"alloc", "mix"}, others
    finally:
        mn.cancel(*ids)
