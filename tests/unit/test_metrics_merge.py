"""`qproxy metrics`' merge of per-proxy files: counters and histograms summed over every proxy
(live, dead, folded), gauges over live ones only, histogram buckets in numeric order, and a
fold that moves an ended proxy's figures without counting them twice or losing them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from qproxy import config as cfg
from qproxy.admin.metrics import collect
from qproxy.node.metricsstore import FOLDED_MARK, LIVE_FILE, PENDING_DIR, RETIRED_FILE, retire
from qproxy.proxy.metrics import ProxyMetrics
from qproxy.proxy.policy.lanes import LaneGate


def _config(tmp: Path) -> cfg.Config:
    (tmp / "q.toml").write_text(f"""
[paths]
state_dir = "{tmp / 'state'}"
audit_dir = "{tmp / 'audit'}"
secrets_file = "{tmp / 'secrets.toml'}"
[upstreams.emu]
url = "http://127.0.0.1:1/api/v1"
iam_url = "http://127.0.0.1:1"
instance = "crn:v1:x"
api_key_secret = "emu"
[resources.ibm_fez]
upstream = "emu"
backend = "fake_fez"
lanes = 4
[resources.ibm_torino]
upstream = "emu"
backend = "fake_torino"
lanes = 1
""")
    return cfg.load(tmp / "q.toml")


def _proxy(conf: cfg.Config, job: str, pid: int, lanes: int, requests: int) -> Path:
    gate = LaneGate(lanes)
    m = ProxyMetrics("ibm_fez", gate)
    gate.active.add("upstream-job")  # one lane busy
    for _ in range(requests):
        m.request(200, True)
    m.request(404, True)
    m.lane_wait.observe(0.2)
    m.upstream_call("job_results", 0.03)
    m.booked(1.5)
    d = conf.state_dir / job
    d.mkdir(parents=True)
    m.write(d / LIVE_FILE)
    (d / "record.json").write_text(json.dumps({"job_id": job, "pid": pid,
                                               "resource": "ibm_fez"}))
    return d


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


def test_merge_and_fold(tmp_path: Path) -> None:
    conf = _config(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _proxy(conf, "11", os.getpid(), lanes=2, requests=3)  # alive (this process)
    gone = _proxy(conf, "12", dead.pid, lanes=1, requests=5)  # its proxy has died
    text = collect(conf).text()
    s = _samples(text)
    fez = (("resource", "ibm_fez"),)
    assert s[("qproxy_requests_total", (("authenticated", "true"), ("code", "200"),
                                        *fez))] == 8
    assert s[("qproxy_request_errors_total", (("code", "404"), *fez))] == 2
    assert s[("qproxy_qpu_seconds_total", fez)] == 3.0
    assert s[("qproxy_lane_wait_seconds_count", fez)] == 2
    assert s[("qproxy_lanes_allocated", fez)] == 2  # the live proxy's only
    assert s[("qproxy_lanes_busy", fez)] == 1
    assert s[("qproxy_proxies_alive", fez)] == 1
    assert s[("qproxy_proxies_alive", (("resource", "ibm_torino"),))] == 0
    les = [line.split('le="')[1].split('"')[0] for line in text.decode().splitlines()
           if line.startswith("qproxy_lane_wait_seconds_bucket")]
    assert les == sorted(les, key=float) and les[-1] == "+Inf"

    assert retire(conf.state_dir, gone)  # the epilog's part: a rename, no parsing
    assert not (gone / LIVE_FILE).exists()
    after = _samples(collect(conf).text())  # folded here
    assert oct((conf.state_dir / RETIRED_FILE).stat().st_mode & 0o777) == "0o600"
    assert not list((conf.state_dir / PENDING_DIR).iterdir())
    assert {k: v for k, v in after.items() if "lanes" not in k[0]} == {
        k: v for k, v in s.items() if "lanes" not in k[0]}
    assert not retire(conf.state_dir, gone)  # nothing left to retire: no double count
    assert _samples(collect(conf).text()) == after


def test_interrupted_fold_counts_nothing_twice(tmp_path: Path) -> None:
    """A fold that wrote the totals but died before removing the files it took: the next
    one skips them (their names are in the totals' first line)."""
    conf = _config(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = _proxy(conf, "12", dead.pid, lanes=1, requests=5)
    assert retire(conf.state_dir, gone)
    once = _samples(collect(conf).text())
    retired = conf.state_dir / RETIRED_FILE
    assert retired.read_text().startswith(FOLDED_MARK)
    name = retired.read_text().split("\n")[0][len(FOLDED_MARK):].strip()
    (conf.state_dir / PENDING_DIR / name).write_text(
        "# TYPE qproxy_requests_total counter\n"
        'qproxy_requests_total{authenticated="true",code="200",resource="ibm_fez"} 5.0\n')
    assert _samples(collect(conf).text()) == once
    assert not list((conf.state_dir / PENDING_DIR).iterdir())


def test_listen_only_on_loopback(tmp_path: Path) -> None:
    conf = _config(tmp_path)
    for bad in ("0.0.0.0:9817", "10.1.2.3:9817", "127.0.0.1:x"):
        r = subprocess.run([sys.executable, "-m", "qproxy", "metrics", "--config",
                            str(tmp_path / "q.toml"), "--listen", bad],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "loopback" in r.stderr
    assert conf.state_dir  # the config the command read is a valid one
