"""qproxy's metrics read by a real Prometheus (Debian's `prometheus`) through a real
node_exporter (Debian's `prometheus-node-exporter`) textfile collector -- the path
qproxy-metrics.service sets up on a node: a job proxy serves requests and an upstream job
against the emulator, `qproxy metrics --textfile` writes the node's file, node_exporter
exports it, Prometheus scrapes it, and every sample arrives with its labels and value, and
every metric docs/operations.md documents is in the file. The same Prometheus loads the
shipped alert rules (conf/prometheus/qproxy-alerts.yml: each evaluates without error, and
each series it reads exists) and answers every panel query of the Grafana dashboard
(conf/grafana/qproxy.json) with numbers; with QPROXY_DASHBOARD_PNG=FILE the panels are drawn
from Prometheus' data into FILE (docs/operations.md's picture)."""

from __future__ import annotations

import json
import math
import os
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

from tests.packages.debroot import REPO
from tests.proxy.conftest import Proxy, read_env_file, write_config
from tests.proxy.test_e2e import _submit_raw

pytestmark = pytest.mark.slow
RULES = REPO / "conf" / "prometheus" / "qproxy-alerts.yml"
DASHBOARD = REPO / "conf" / "grafana" / "qproxy.json"
# Grafana's interval variables, as the dashboard's queries are run here
GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "5m"}
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
        f"rule_files: ['{RULES}']\n"
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
    # what qproxy-metrics.service runs (--every), with the device probe (--devices): the
    # counters rise between scrapes, so the dashboard's rates have something to show
    writer = subprocess.Popen([sys.executable, "-m", "qproxy", "metrics", "--config",
                               str(p.config), "--textfile", str(textdir / "qproxy.prom"),
                               "--every", "0.5", "--devices"], cwd=REPO)
    started = time.time()
    try:
        deadline = time.time() + 60
        while not (textdir / "qproxy.prom").exists():
            assert writer.poll() is None and time.time() < deadline, "no textfile"
            time.sleep(0.1)
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
            text = (textdir / "qproxy.prom").read_text()
            if re.search(r'^qproxy_qpu_seconds_total\{resource="ibm_fez"\} [0-9.]*[1-9]',
                         text, re.M) and 'qproxy_proxies_alive{resource="ibm_fez"} 1.0' in text:
                break
            assert writer.poll() is None and time.time() < deadline, text
            time.sleep(0.5)
    finally:
        writer.terminate()
        writer.wait(10)
        time.sleep(2.5)  # Prometheus scrapes the writer's last file (every 1 s)
        text = (textdir / "qproxy.prom").read_text()
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
    assert 'qproxy_device_up{resource="ibm_fez"} 1.0' in text, text

    # the shipped alert rules: loaded, evaluated without error, and reading only metrics
    # that exist here (the device gauge, the node's gauges, the proxies' families)
    names = set(requests.get(f"{prom}/api/v1/label/__name__/values", timeout=30)
                .json()["data"])
    rules = [r for g in requests.get(f"{prom}/api/v1/rules", timeout=30).json()["data"]
             ["groups"] for r in g["rules"]]
    assert len(rules) == len(re.findall(r"^ +- alert: ", RULES.read_text(), re.M)), rules
    for rule in rules:
        assert rule["health"] == "ok", rule
        used = set(re.findall(r"\b((?:qproxy|node)_[a-z_]+)", rule["query"]))
        # (a counter no call raised yet, qproxy_upstream_errors_total here, has its TYPE
        # line in the file but no series: prometheus_client writes labelled ones on first use)
        assert used and used <= names | families, (rule["name"], used - names - families)
    firing = [r["name"] for r in rules if r["state"] != "inactive"]
    assert firing == [], firing  # a healthy node raises nothing

    # every query of every dashboard panel returns numbers from this Prometheus
    panels = dashboard_queries()
    assert len(panels) >= 12
    for title, expr in panels:
        result = query(prom, expr)
        values = [float(r["value"][1]) for r in result]
        assert values and not all(math.isnan(v) for v in values), (title, expr, result)
    assert [float(r["value"][1]) for r in query(prom, panels[0][1])] == [1.0, 1.0]
    waits = query(prom, dict(panels)["Lane wait, p95"])
    assert 0 < float(waits[0]["value"][1]) <= 0.01, waits  # a free lane: the first bucket
    if os.environ.get("QPROXY_DASHBOARD_PNG"):
        draw(prom, panels, started, Path(os.environ["QPROXY_DASHBOARD_PNG"]))


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana's variables filled in) of each target."""
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, expr
            out.append((panel["title"], expr))
    return out


def draw(prom: str, panels: list[tuple[str, str]], since: float, path: Path) -> None:
    """The panels as small multiples, from query_range over the test's run, drawn by
    matplotlib (Agg) in a child process (it stays out of pytest's: only this optional
    drawing needs it)."""
    end = time.time()
    data: dict[str, list[tuple[str, list[list[float]]]]] = {}
    for title, expr in panels:
        r = requests.get(f"{prom}/api/v1/query_range", timeout=30, params={
            "query": expr, "start": since - 5, "end": end, "step": "1s"})
        for series in r.json()["data"]["result"]:
            label = ",".join(v for k, v in sorted(series["metric"].items())
                             if k not in ("instance", "job")) or "value"
            points = [[float(x) - since, float(y)] for x, y in series["values"]]
            data.setdefault(title, []).append((label, points))
    subprocess.run([sys.executable, "-c", PLOT, json.dumps(data), str(path)], check=True,
                   cwd="/")


PLOT = """
import json, math, sys
import matplotlib
matplotlib.use("Agg")
from matplotlib.figure import Figure
data = json.loads(sys.argv[1])
rows = math.ceil(len(data) / 3)
fig = Figure(figsize=(15, 2.3 * rows), layout="constrained")
axes = list(fig.subplots(rows, 3, squeeze=False).flat)
for ax, (title, series) in zip(axes, data.items()):
    for label, points in series:
        ax.plot([x for x, _ in points], [y for _, y in points], label=label)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="upper left")
for ax in axes[len(data):]:
    ax.set_visible(False)
fig.suptitle("conf/grafana/qproxy.json's panels from tests/packages/test_prometheus.py's "
             "Prometheus (x: seconds into the test)", fontsize=10)
fig.savefig(sys.argv[2], dpi=72)
"""
