"""`qproxy metrics` after real jobs through real proxies, parsed with prometheus_client's own
text parser: the request counters rose by exactly the requests made, lanes show allocated and
busy while a job runs and free once it ended, and the merged output names no job or user."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.cluster import EMULATOR_URL, Cluster

TOOL = Path(__file__).parents[1] / "support" / "jobtool.py"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(cluster: Cluster, *args: str) -> tuple[Samples, str]:
    out = subprocess.run([sys.executable, "-m", "qproxy", "metrics", "--config",
                          str(cluster.config), *args], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    samples: Samples = {}
    for fam in text_string_to_metric_families(out):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, out


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum over the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and set(labels.items()) <= set(ls))


def wait_for(cluster: Cluster, ok: object, timeout: float = 40) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples, _ = scrape(cluster)
        if ok(samples) or time.monotonic() > deadline:  # type: ignore[operator]
            return samples
        time.sleep(0.5)


def test_requests_and_errors_are_counted(qpu_cluster: Cluster) -> None:
    before, _ = scrape(qpu_cluster)
    n = 7
    job = qpu_cluster.sbatch(f"python3 {TOOL} requests {n} > codes.txt\n",
                             "--q_backend=ibm_fez", "-L", "ibm_fez:1")
    assert job.state == "COMPLETED", job.output()
    qpu_cluster.wait_gone(job.id)
    codes = job.output("codes.txt").split()[1:]
    assert codes == ["200"] * (n + 1) + ["403"], codes
    after, text = scrape(qpu_cluster)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # IAM exchange + n lists + the refusal, all with the job's token
    assert delta("qproxy_requests_total", resource="ibm_fez", authenticated="true") == n + 2
    assert delta("qproxy_requests_total", resource="ibm_fez", code="200") == n + 1
    assert delta("qproxy_request_errors_total", resource="ibm_fez", code="403") == 1
    assert delta("qproxy_request_errors_total", resource="ibm_fez") == 1
    # every backend list went upstream once, and was timed
    assert delta("qproxy_upstream_latency_seconds_count", resource="ibm_fez",
                 operation="backends") >= n
    # the ended proxy's gauges are gone, its counters stay (folded by the epilog)
    assert value(after, "qproxy_proxies_alive", resource="ibm_fez") == 0
    assert value(after, "qproxy_lanes_allocated", resource="ibm_fez") == 0
    assert not (qpu_cluster.run_dir / job.id).exists()
    # nothing in the merged view names a job or a user
    assert f'"{job.id}"' not in text and qpu_cluster.user not in text


def pause(cluster: Cluster, status: str) -> None:
    """A paused device keeps its upstream jobs Queued (the emulator's admin endpoint): the
    job's lane stays busy for as long as the test looks."""
    subprocess.run([sys.executable, "-m", "qproxy", "emulator", "device", "fake_fez", status,
                    "--url", EMULATOR_URL, "--api-key-file",
                    str(cluster.state / "emulator.keys")], check=True, timeout=30,
                   capture_output=True)


def test_lanes_busy_while_a_job_runs(qpu_cluster: Cluster, tmp_path: Path) -> None:
    pause(qpu_cluster, "paused")
    job = qpu_cluster.sbatch(f"python3 {TOOL} busy 1\n", "--q_backend=ibm_fez",
                             "-L", "ibm_fez:2", wait=False)
    try:
        qpu_cluster.wait_state(job.id, {"RUNNING"})
        busy = wait_for(qpu_cluster, lambda s: value(s, "qproxy_lanes_busy",
                                                     resource="ibm_fez") >= 1, 120)
        assert value(busy, "qproxy_lanes_busy", resource="ibm_fez") == 1
        assert value(busy, "qproxy_lanes_allocated", resource="ibm_fez") == 2
        assert value(busy, "qproxy_proxies_alive", resource="ibm_fez") == 1
        assert value(busy, "qproxy_upstream_jobs_total", resource="ibm_fez") >= 1
        assert value(busy, "qproxy_lane_wait_seconds_count", resource="ibm_fez") >= 1
        assert value(busy, "qproxy_lanes_busy", resource="ibm_torino") == 0
        # the proxy's own file is root-only, in the job's root-only directory
        live = qpu_cluster.run_dir / job.id / "metrics.prom"
        assert stat.S_IMODE(live.stat().st_mode) == 0o600 and live.stat().st_uid == 0
        assert stat.S_IMODE(live.parent.stat().st_mode) == 0o700
        # node_exporter's textfile collector: a world-readable, aggregated file
        prom = tmp_path / "qproxy.prom"
        scrape(qpu_cluster, "--textfile", str(prom))
        assert stat.S_IMODE(os.stat(prom).st_mode) == 0o644
        assert "qproxy_lanes_busy" in prom.read_text()
    finally:
        qpu_cluster.as_user("scancel", job.id)
        pause(qpu_cluster, "online")
    qpu_cluster.wait_gone(job.id)
    idle, _ = scrape(qpu_cluster)
    assert value(idle, "qproxy_lanes_busy", resource="ibm_fez") == 0
    assert value(idle, "qproxy_lanes_allocated", resource="ibm_fez") == 0
    assert value(idle, "qproxy_upstream_jobs_total", resource="ibm_fez") >= 1
