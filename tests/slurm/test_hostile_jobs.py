"""Red team on the real cluster: a neighbour (the cluster's second unprivileged user, in a Slurm
job of their own on the same node) attacks another user's running QPU job. Each test performs
the attack from inside the neighbour's job (tests/support/attacker.py) and checks the outcome
from the victim's job and from root's files. The loopback versions of these attacks, with
their figures, are tests/proxy/test_hostile.py and bench section 9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from qproxy.node.process import is_our_proxy, serve_options
from qproxy.records import ProxyRecord
from tests.support.cluster import Cluster, Job
from tests.support.waiting import wait_for

SUPPORT = Path(__file__).parents[1] / "support"
TOOL = SUPPORT / "jobtool.py"
ATTACKER = SUPPORT / "attacker.py"
NEIGHBOUR = os.environ.get("QPROXY_CLUSTER_USER2", "qpuuser2")
QPU = ("--q_backend=ibm_fez", "--gres=qpu:1")


@pytest.fixture(scope="module")
def neighbour(qpu_cluster: Cluster) -> Cluster:
    """The same cluster, submitting as the second user."""
    return replace(qpu_cluster, user=NEIGHBOUR)


@pytest.fixture(autouse=True)
def _no_job_outlives_its_test(qpu_cluster: Cluster, neighbour: Cluster) -> Iterator[None]:
    """A test that fails half-way leaves its victim waiting for ./go (up to 2 min) on a
    lane and the node, which failed the next six tests of the run too (seen in CI): each
    user's jobs are cancelled when a test ends, and gone before the next one starts."""
    yield
    for c in (qpu_cluster, neighbour):
        c.as_user("scancel", "--user", c.user)
    wait_for(lambda: not any(c.as_user("squeue", "-h", "--user", c.user).stdout.strip()
                             for c in (qpu_cluster, neighbour)), 60, "no job of either user")


def _wait_file(path: Path, timeout: float = 60) -> None:
    wait_for(path.exists, timeout, f"{path} to appear", 0.2)


def _victim(cluster: Cluster, steps: str = "") -> tuple[Job, dict[str, str]]:
    """A running QPU job of the first user: its environment, then `steps` once ./go exists."""
    job = cluster.sbatch(
        f"python3 {TOOL} env-dump env.json\n"
        "for i in $(seq 600); do [ -e go ] && break; sleep 0.2; done\n"
        f"{steps}\nsleep 1\n", *QPU, wait=False)
    _wait_file(job.workdir / "env.json")
    env = json.loads((job.workdir / "env.json").read_text())
    assert env["QISKIT_IBM_URL"].startswith("http://127.0.0.1:"), env["QISKIT_IBM_URL"]
    return job, env


def _port(env: dict[str, str]) -> int:
    return int(env["IAM_URL"].rsplit(":", 1)[1].strip("/"))


def _go(cluster: Cluster, job: Job) -> Job:
    (job.workdir / "go").touch()
    job.fields = cluster.wait_state(job.id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 180)
    return job


def _result(job: Job, key: str) -> Any:
    """``key`` of the first JSON line of the job's output that has it."""
    for line in job.output().splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            if key in doc:
                return doc[key]
    raise AssertionError(f"no {key} in the output of job {job.id}:\n{job.output()}")


def _record(cluster: Cluster, job: Job) -> ProxyRecord:
    rec = ProxyRecord.from_json(json.loads((cluster.run_dir / job.id / "record.json")
                                           .read_text()))
    assert rec is not None
    return rec


def test_unauthenticated_flood_is_bounded_and_the_victim_served(
        qpu_cluster: Cluster, neighbour: Cluster) -> None:
    victim, env = _victim(qpu_cluster, f"python3 {TOOL} probe 10")
    audit = qpu_cluster.audit_dir / f"job-{victim.id}.jsonl"
    before = audit.stat().st_size
    n = 2000
    attack = neighbour.sbatch(f"python3 {ATTACKER} flood {_port(env)} {n}\n")
    assert attack.state == "COMPLETED", attack.output()
    flood = _result(attack, "flood")
    assert flood["sent"] == n and set(flood["statuses"]) <= {"401", "404", "429"}, flood
    grown = audit.stat().st_size - before
    assert grown / n <= 200, f"{grown} audit bytes for {n} unauthenticated requests"
    probe = _result(_go(qpu_cluster, victim), "statuses")
    assert victim.state == "COMPLETED" and set(probe) == {200}, victim.output()


def test_connection_flood_cannot_starve_the_victim(qpu_cluster: Cluster,
                                                   neighbour: Cluster) -> None:
    victim, env = _victim(qpu_cluster, f"python3 {TOOL} probe 20")
    attack = neighbour.sbatch(f"python3 {ATTACKER} hold {_port(env)} 300 25\n", wait=False)
    _wait_file(attack.workdir / "holding")
    held = int((attack.workdir / "holding").read_text())
    _go(qpu_cluster, victim)
    probe = _result(victim, "statuses")
    attack.fields = neighbour.wait_state(attack.id, {"COMPLETED", "FAILED"}, 120)
    result = _result(attack, "hold")
    limit = 16  # [proxy] max_connections_others (the shipped default the cluster uses)
    assert held <= limit and result["refused"] >= 300 - limit, result
    assert victim.state == "COMPLETED" and set(probe) == {200}, victim.output()


def test_dead_proxys_port_cannot_be_taken(qpu_cluster: Cluster, neighbour: Cluster) -> None:
    """The proxy crashed (SIGKILL): its port is privileged, so the neighbour cannot listen on
    it and answer the job's requests; the job's request fails instead of reaching a forger."""
    victim, env = _victim(qpu_cluster, f"python3 {TOOL} probe 1")
    port = _port(env)
    assert port < 1024, env["IAM_URL"]
    os.kill(_record(qpu_cluster, victim).pid, signal.SIGKILL)
    time.sleep(0.5)
    attack = neighbour.sbatch(f"python3 {ATTACKER} bind {port}\n")
    assert _result(attack, "bind") == {"bound": False, "errno": "EACCES"}, attack.output()
    probe = _result(_go(qpu_cluster, victim), "statuses")
    assert probe == ["ConnectionRefusedError", "ConnectionRefusedError"], victim.output()
    # the control: an unprivileged port is the neighbour's for the taking
    free = neighbour.sbatch(f"python3 {ATTACKER} bind 0\n")
    assert _result(free, "bind") == {"bound": True}, free.output()


def test_lookalike_process_is_not_taken_for_the_proxy(qpu_cluster: Cluster,
                                                      neighbour: Cluster) -> None:
    """The PID-reuse guard wants root and a Python executable, not only the command line."""
    victim, _ = _victim(qpu_cluster)
    attack = neighbour.sbatch(f"python3 {ATTACKER} lookalike {victim.id} 30\n", wait=False)
    _wait_file(attack.workdir / "lookalike.pid")
    pid = int((attack.workdir / "lookalike.pid").read_text())
    deadline = time.monotonic() + 10
    while b"serve" not in Path(f"/proc/{pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    words = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert ["serve", "--job-id", victim.id] == words[words.index("serve"):][:3]
    assert serve_options(pid) == set() and not is_our_proxy(pid, victim.id)
    real = _record(qpu_cluster, victim).pid
    assert is_our_proxy(real, victim.id, _record(qpu_cluster, victim).spare)
    neighbour.as_user("scancel", attack.id)
    _go(qpu_cluster, victim)
    assert victim.state == "COMPLETED", victim.output()


def test_delete_of_own_finished_job_keeps_its_usage(qpu_cluster: Cluster) -> None:
    job = qpu_cluster.sbatch(f"python3 {TOOL} sample-delete\n", *QPU)
    assert job.state == "COMPLETED", job.output()
    assert "delete " in job.output(), job.output()
    qpu_cluster.wait_gone(job.id)
    usage = qpu_cluster.usage(job.id)
    assert usage is not None and usage["upstream_jobs"] == 1, usage
    assert float(str(usage["quantum_seconds"])) > 0, usage
    check = subprocess.run([sys.executable, "-m", "qproxy", "audit", "verify-usage",
                            "--config", str(qpu_cluster.config)],
                           capture_output=True, text=True, check=False)
    # This job's line and audit log verify (a reused state dir may hold older, unchained
    # lines and logs: those are reported, and are not this test's business).
    lines = (qpu_cluster.audit_dir / "usage.jsonl").read_text().splitlines()
    n = next(i for i, ln in enumerate(lines, 1) if json.loads(ln).get("job_id") == job.id)
    mine = [p for p in check.stderr.splitlines()
            if f"usage.jsonl:{n}:" in p or f"job {job.id}" in p or f"job-{job.id}." in p]
    assert check.returncode == 0 or mine == [], mine
    assert check.returncode == 0 or check.stderr, check.stdout


def test_neighbour_finds_no_vendor_key(qpu_cluster: Cluster, neighbour: Cluster) -> None:
    """Everything the neighbour can read while a victim's job and proxy run: the cluster's
    state dir (configs, run and audit dirs), /tmp, /dev/shm, /run and every process's
    cmdline and environ."""
    victim, env = _victim(qpu_cluster)
    roots = [str(qpu_cluster.state), "/tmp", "/dev/shm", "/run"]
    attack = neighbour.sbatch(f"python3 {ATTACKER} scan dump.bin {' '.join(roots)}\n",
                              timeout=300)
    assert attack.state == "COMPLETED", attack.output()
    scanned = _result(attack, "scan")
    dump = (attack.workdir / "dump.bin").read_bytes()
    assert scanned["files"] > 10 and len(dump) > 1000, scanned
    assert qpu_cluster.vendor_secret().encode() not in dump
    _go(qpu_cluster, victim)
