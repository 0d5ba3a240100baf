"""`qproxy hook reap` removes the proxy, record and lease of a job Slurm no longer runs
(slurmd was down at its end, or the node rebooted) and leaves live jobs alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from qproxy.config import load
from qproxy.slurm import lease
from qproxy.slurm.proxyproc import alive
from tests.support.cluster import Cluster


def test_reaper_cleans_dead_job(cluster: Cluster) -> None:
    config = load(cluster.config)
    dead = "999999"
    jd = cluster.run_dir / dead
    jd.mkdir(mode=0o700)
    fake = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", "serve", "--job-id", dead],
        start_new_session=True,
    )
    (jd / "record.json").write_text(
        json.dumps({"job_id": dead, "pid": fake.pid, "resource": "ibm_torino", "lanes": 1})
    )
    lease.acquire(config, config.resources["ibm_torino"], dead, 1)
    old = time.time() - 3600  # a fresh dir could belong to a job starting right now
    os.utime(jd, (old, old))
    live = cluster.sbatch("sleep 20\n", "--q_backend=ibm_fez", "--gres=qpu:1", wait=False)
    try:
        cluster.wait_state(live.id, {"RUNNING"})
        while not (cluster.run_dir / live.id / "record.json").exists():
            time.sleep(0.1)
        out = subprocess.run(
            [sys.executable, "-m", "qproxy", "hook", "reap", "--config", str(cluster.config)],
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        reaped = json.loads(out.stdout)
        assert [r["job_id"] for r in reaped] == [dead]
        fake.wait(timeout=10)
        assert not alive(fake.pid)
        assert not jd.exists()
        assert dead not in lease.held(config).get("ibm_torino", {})
        assert (cluster.run_dir / live.id / "record.json").exists()  # live job untouched
    finally:
        fake.kill()
        cluster.as_user("scancel", live.id)
