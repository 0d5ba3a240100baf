"""Every way a job ends leaves no proxy and no active upstream job: scancel, time limit,
and a proxy that died mid-job (the epilog cancels leftovers from the ledger)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from qproxy.config import load
from qproxy.node.process import is_our_proxy
from qproxy.slurm.proxyproc import Recorded
from tests.support.cluster import Cluster, Job

TOOL = Path(__file__).parents[1] / "support" / "jobtool.py"
FINAL = {"Completed", "Failed", "Cancelled", "Cancelled - Ran too long"}


def upstream_status(cluster: Cluster, ids: list[str]) -> dict[str, Any]:
    """Ask the emulator directly, with the admin's credential."""
    from qproxy.upstream import connect, read_credentials

    config = load(cluster.config)
    upstream = config.upstreams["emulator"]

    async def run() -> dict[str, Any]:
        client = connect(upstream, read_credentials(config, upstream))
        try:
            out = {}
            for i in ids:
                doc = (await client.get_job(i, {})).doc
                out[i] = doc.get("status") or (doc.get("state") or {}).get("status")
            return out
        finally:
            await client.close()

    return asyncio.run(run())


def proxy_of(cluster: Cluster, job_id: str) -> Recorded:
    """(pid, spare id, start) from the job's record (waiting for the prolog to write it): a
    proxy a spare forked is recognised by its `--spare ID` and start time, not by a
    `--job-id` (qproxy/proxy/spare.py)."""
    path = cluster.run_dir / job_id / "record.json"
    deadline = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < deadline, f"no record for job {job_id}"
        time.sleep(0.1)
    record = json.loads(path.read_text())
    return Recorded(int(record["pid"]), record.get("spare"), record.get("start_ticks"))


def start_busy(cluster: Cluster, *args: str) -> tuple[Job, list[str], Recorded]:
    job = cluster.sbatch(
        f"srun python3 {TOOL} busy 2\n", "--q_backend=ibm_fez", "-L", "ibm_fez:2", *args, wait=False
    )
    cluster.wait_state(job.id, {"RUNNING"})
    deadline = time.monotonic() + 120
    ids: list[str] = []
    while time.monotonic() < deadline and len(ids) < 2:
        ids = [w.split()[1] for w in job.output().splitlines() if w.startswith("upstream-job")]
        time.sleep(0.1)
    if len(ids) != 2:
        cluster.as_user("scancel", job.id)
        raise AssertionError(job.output())
    proxy = proxy_of(cluster, job.id)
    assert is_our_proxy(proxy.pid, job.id, proxy.spare, proxy.start)
    return job, ids, proxy


def assert_clean(cluster: Cluster, job: Job, ids: list[str],
                 proxy: Recorded) -> dict[str, Any]:
    cluster.wait_gone(job.id)
    assert not is_our_proxy(proxy.pid, job.id, proxy.spare, proxy.start)
    statuses = upstream_status(cluster, ids)
    assert all(s in FINAL for s in statuses.values()), statuses
    usage = cluster.usage(job.id)
    assert usage and usage["upstream_jobs"] == 2, usage
    assert cluster.node_state() == "idle"
    return usage


def test_scancel(qpu_cluster: Cluster) -> None:
    job, ids, proxy = start_busy(qpu_cluster)
    qpu_cluster.as_user("scancel", job.id)
    assert_clean(qpu_cluster, job, ids, proxy)


def test_time_limit(qpu_cluster: Cluster) -> None:
    job, ids, proxy = start_busy(qpu_cluster, "--time=1")
    # Slurm's time limit granularity is a minute (checked every ~30 s)
    qpu_cluster.wait_state(job.id, {"TIMEOUT"}, timeout=150)
    assert_clean(qpu_cluster, job, ids, proxy)


def test_proxy_death(qpu_cluster: Cluster) -> None:
    job, ids, proxy = start_busy(qpu_cluster)
    os.kill(proxy[0], signal.SIGKILL)  # no graceful shutdown, no summary
    qpu_cluster.as_user("scancel", job.id)
    usage = assert_clean(qpu_cluster, job, ids, proxy)
    assert usage.get("by") == "epilog", usage


def test_proxy_death_fails_new_steps_clearly(cluster: Cluster) -> None:
    job = cluster.sbatch("sleep 2; srun true\n", "--q_backend=ibm_fez", "--gres=qpu:1", wait=False)
    cluster.wait_state(job.id, {"RUNNING"})
    pid = proxy_of(cluster, job.id).pid
    os.kill(pid, signal.SIGKILL)
    cluster.wait_state(job.id, {"FAILED", "COMPLETED"}, timeout=60)
    assert "QPU proxy of job" in job.output() and "no longer running" in job.output()
    cluster.wait_gone(job.id)


def test_garbage_on_proxy_port(cluster: Cluster) -> None:
    """A task writing junk to its proxy's port does not keep anything alive."""
    script = (
        "python3 - <<'PY'\n"
        "import os, socket, urllib.parse\n"
        "u = urllib.parse.urlparse(os.environ['QISKIT_IBM_URL'])\n"
        "for junk in (b'\\x00\\xff' * 5000, b'GET / HTTP/9.9\\r\\n\\r\\n', b'POST /x'):\n"
        "    s = socket.create_connection((u.hostname, u.port)); s.sendall(junk); s.close()\n"
        "print('junk sent')\n"
        "PY\n")
    job = cluster.sbatch(script, "--q_backend=ibm_fez", "--gres=qpu:1")
    assert job.state == "COMPLETED" and "junk sent" in job.output(), job.output()
    cluster.wait_gone(job.id)
    assert cluster.usage(job.id)["proxy"] == "terminated"  # type: ignore[index]


def test_slurmd_restart_mid_job(cluster: Cluster) -> None:
    """The proxy is not a child of slurmd: a slurmd restart under a running job keeps it,
    and the epilog run by the new slurmd still tears it down."""
    import subprocess
    import sys

    job = cluster.sbatch("sleep 8; srun printenv QPU_BACKEND\n", "--q_backend=ibm_fez",
                         "--gres=qpu:1", wait=False)
    cluster.wait_state(job.id, {"RUNNING"})
    pid, spare, start = proxy_of(cluster, job.id)
    slurmd = int((cluster.state / "pid" / "slurmd.pid").read_text())
    os.kill(slurmd, signal.SIGTERM)
    while Path(f"/proc/{slurmd}").exists():
        time.sleep(0.1)
    assert is_our_proxy(pid, job.id, spare, start)
    subprocess.run([sys.executable, str(Path(__file__).parents[2] / "scripts" / "cluster"),
                    "up"], check=True, stdout=subprocess.DEVNULL)
    cluster.wait_state(job.id, {"COMPLETED"}, timeout=60)
    assert "ibm_fez" in job.output()
    cluster.wait_gone(job.id)
    assert not is_our_proxy(pid, job.id, spare, start)
