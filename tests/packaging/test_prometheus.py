"""qproxy's metrics read by a real Prometheus (Debian's `prometheus`) through a real
node_exporter (Debian's `prometheus-node-exporter`) textfile collector -- the path
qproxy-metrics.service sets up on a node: a job proxy serves requests and an upstream job
against the emulator, `qproxy metrics --textfile` writes the node's file, node_exporter
exports it, Prometheus scrapes it, and every sample arrives with its labels and value, and
every metric docs/operations.md documents is in the file."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.packaging.debroot import REPO
from tests.proxy.conftest import Proxy, read_env_file, write_config
from tests.proxy.test_e2e import _submit_raw

pytestmark = pytest.mark.slow
SAMPLE = re.compile(r"^(qproxy_[a-z_]+)(?:\{(.*)\})? (\S+)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """node_exporter (textfile collector only) and Prometheus scraping it every second, both
    on loopback; (the textfile directory, Prometheus' URL)."""
    for tool in ("prometheus", "prometheus-node-exporter"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} missing: apt-get install prometheus prometheus-node-exporter "
                        "(scripts/test's prepare does)")
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    ne_port, prom_port = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: node\n    static_configs: [{{targets: ['127.0.0.1:{ne_port}']}}]\n")
    procs = [
        subprocess.Popen(["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{ne_port}",
                          "--collector.disable-defaults", "--collector.textfile",
                          f"--collector.textfile.directory={textdir}"],
                         stdout=subprocess.DEVNULL, stderr=(tmp_path / "ne.log").open("wb")),
        subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                          f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{prom_port}"],
                         stdout=subprocess.DEVNULL, stderr=(tmp_path / "prom.log").open("wb")),
    ]
    try:
        url = f"http://127.0.0.1:{prom_port}"
        deadline = time.time() + 60
        while True:
            try:
                if requests.get(f"{url}/-/ready", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert all(p.poll() is None for p in procs), (tmp_path / "prom.log").read_text()
            assert time.time() < deadline, "Prometheus not ready after 60 s"
            time.sleep(0.2)
        yield textdir, url
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def query(url: str, promql: str) -> list[dict[str, Any]]:
    r = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=30)
    r.raise_for_status()
    return list(r.json()["data"]["result"])


def labels(text: str | None) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', text or ""))


def job_proxy(emulator: Any, d: Path, job_id: str) -> Proxy:
    """`qproxy serve` for one job, its files where the prolog puts them (state_dir/<job>/:
    proxy.env, metrics.prom beside it, and the prolog's record.json naming its pid and
    resource, which `qproxy metrics` reads to count the live proxies)."""
    conf = write_config(emulator, d, "metrics_seconds = 0.2")
    job_dir = d / "state" / job_id
    job_dir.mkdir(parents=True, mode=0o700)
    env_file = job_dir / "proxy.env"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qproxy", "serve", "--config", str(conf), "--job-id", job_id,
         "--user", "alice", "--backend", "ibm_fez", "--lanes", "2",
         "--end-time", str(time.time() + 3600), "--env-file", str(env_file)],
        stdout=(d / "stdout").open("wb"), stderr=(d / "stderr").open("wb"),
        stdin=subprocess.DEVNULL, cwd=REPO)
    p = Proxy(proc, d, env_file, d / "audit" / f"job-{job_id}.jsonl",
              job_dir / "ledger.jsonl", job_dir / "summary.json", conf)
    deadline = time.time() + 30
    while not env_file.exists():
        if proc.poll() is not None or time.time() > deadline:
            p.stop(5)
            raise RuntimeError("proxy did not start: " + p.output())
        time.sleep(0.05)
    p.env = read_env_file(env_file)
    (job_dir / "record.json").write_text(f'{{"pid": {proc.pid}, "resource": "ibm_fez"}}')
    return p


def test_metrics_reach_prometheus(emulator: Any, tmp_path: Path,
                                  daemons: tuple[Path, str]) -> None:
    textdir, prom = daemons
    p = job_proxy(emulator, tmp_path / "p", "7001")
    try:
        # the proxy imports aiohttp after writing its env file: on a loaded 2-core machine
        # that took more than tests/proxy's 10 s, so a longer wait here
        r = requests.post(p.root + "/identity/token", timeout=120, data={
            "grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": p.token})
        r.raise_for_status()
        headers = {"Authorization": "Bearer " + r.json()["access_token"]}
        assert requests.get(p.api + "/backends", headers=headers, timeout=120).ok
        assert requests.get(p.api + "/backends/ibm_torino/status", headers=headers,
                            timeout=120).status_code == 403
        assert requests.get(p.api + "/backends", timeout=120).status_code == 401
        job = _submit_raw(p, headers)
        deadline = time.time() + 120
        while requests.get(f"{p.api}/jobs/{job}", headers=headers,
                           timeout=120).json()["state"]["status"] != "Completed":
            assert time.time() < deadline, "the upstream job did not complete"
            time.sleep(0.5)
        deadline = time.time() + 30  # the proxy books the job's QPU seconds, then its file
        while True:
            subprocess.run([sys.executable, "-m", "qproxy", "metrics", "--config",
                            str(p.config), "--textfile", str(textdir / "qproxy.prom")],
                           check=True, cwd=REPO)
            text = (textdir / "qproxy.prom").read_text()
            if re.search(r'^qproxy_qpu_seconds_total\{resource="ibm_fez"\} [0-9.]*[1-9]',
                         text, re.M) and 'qproxy_proxies_alive{resource="ibm_fez"} 1.0' in text:
                break
            assert time.time() < deadline, text
            time.sleep(0.5)
    finally:
        p.stop()

    samples = [SAMPLE.match(line) for line in text.splitlines()]
    found = [(m.group(1), labels(m.group(2)), float(m.group(3))) for m in samples if m]
    assert len(found) > 20, text
    # every metric the operations guide documents is in the file
    documented = set(re.findall(r"^\| `(qproxy_[a-z_]+)` \|",
                                (REPO / "docs/operations.md").read_text(), re.M))
    families = set(re.findall(r"^# TYPE (qproxy_[a-z_]+) ", text, re.M))
    assert len(documented) >= 10 and documented <= families, documented - families

    # ... and every sample of it reaches Prometheus with its labels and value
    deadline = time.time() + 60
    while not query(prom, 'qproxy_upstream_jobs_total{resource="ibm_fez"}'):
        assert time.time() < deadline, "Prometheus never scraped node_exporter's textfile"
        time.sleep(1)
    for name, want, value in found:
        # node_exporter re-renders a bucket bound (le="1.0" arrives as le="1"): compare numbers
        bound = want.pop("le", None)
        selector = ",".join(f'{k}="{v}"' for k, v in sorted(want.items()))
        result = [r for r in query(prom, f"{name}{{{selector}}}")
                  if bound is None or float(r["metric"]["le"]) == float(bound)]
        assert len(result) == 1, (name, want, bound, result)
        got = {k: v for k, v in result[0]["metric"].items()
               if k not in ("__name__", "job", "instance", "le")}
        assert got == want, (name, got, want)
        assert float(result[0]["value"][1]) == pytest.approx(value), (name, want, bound)
    # a documented query (docs/operations.md, Metrics) answers
    busy = query(prom, "sum by (resource) (qproxy_lanes_allocated)")
    assert {r["metric"]["resource"] for r in busy} >= {"ibm_fez"}
