"""Multi-node jobs with real processes: an emulator, a job's PRIMARY proxy (`qproxy serve
--relay-listen`, vendor key, the job's one lane gate) and a RELAY proxy (`qproxy serve
--relay-to`, no vendor key) as on a job's other node, and the unmodified client through both.
All on loopback; the relay listener takes a privileged port (the tests run as root)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from qproxy.emulator.reader import EmulatorReader, parse_time, peak_concurrency
from qproxy.proxy.relay.auth import (
    NODE_HEADER,
    RELAY_HEADER,
    RELAY_PORT_ENV,
    relay_token,
    sign_request,
)

from .conftest import Proxy, read_env_file, write_config
from .test_e2e import _submit_raw, bell, isa

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="the relay listener binds a privileged port"),
]
RELAY_PORTS = "900-999"


def _with_cluster_key(conf: Path, key_file: Path, secrets_file: str | None = None) -> None:
    text = conf.read_text().replace(
        "[paths]\n", f'[paths]\ncluster_key_file = "{key_file}"\n', 1)
    if secrets_file is not None:  # the relay's config: a secrets file it cannot even find
        text = text.replace('secrets_file = "secrets.toml"', f'secrets_file = "{secrets_file}"')
        text = text.replace('secrets_key_file = "secrets.key"',
                            f'secrets_key_file = "{secrets_file}.key"')
    conf.write_text(text)


def _spawn(d: Path, args: list[str], env_file: Path, job_id: str, conf: Path) -> Proxy:
    proc = subprocess.Popen(
        [sys.executable, "-m", "qproxy", "serve", *args],
        stdout=(d / "stdout").open("wb"), stderr=(d / "stderr").open("wb"),
        stdin=subprocess.DEVNULL, env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8"})
    p = Proxy(proc, d, env_file, d / "audit" / f"job-{job_id}.jsonl", d / "job" / "ledger.jsonl",
              d / "job" / "summary.json", conf)
    deadline = time.time() + 30
    while not env_file.exists():
        if proc.poll() is not None or time.time() > deadline:
            if proc.poll() is None:
                p.stop(5)
            raise RuntimeError("proxy did not start: " + p.output())
        time.sleep(0.05)
    p.env = read_env_file(env_file)
    return p


class Job:
    """One Slurm job's proxies: a primary and any number of relays."""

    def __init__(self, emulator: Any, root: Path, job_id: str, key_file: Path) -> None:
        self.emulator, self.root, self.job_id, self.key_file = emulator, root, job_id, key_file
        self.started: list[Proxy] = []

    def primary(self, lanes: int = 1, extra: str = "") -> Proxy:
        d = self.root / "primary"
        conf = write_config(self.emulator, d, f'relay_ports = "{RELAY_PORTS}"\n{extra}')
        _with_cluster_key(conf, self.key_file)
        env_file = d / "job" / "env"
        p = _spawn(d, ["--config", str(conf), "--job-id", self.job_id, "--user", "alice",
                       "--backend", "ibm_fez", "--lanes", str(lanes),
                       "--end-time", str(time.time() + 3600), "--env-file", str(env_file),
                       "--relay-listen", "127.0.0.1"], env_file, self.job_id, conf)
        self.started.append(p)
        return p

    def relay(self, primary: Proxy, node: str = "node2", extra: str = "",
              before: Any = None) -> Proxy:
        """``before(d)``: called with the relay's directory before it starts."""
        d = self.root / f"relay-{node}"
        conf = write_config(self.emulator, d, extra)
        if before is not None:
            before(d)
        (d / "secrets.toml").unlink()  # this node's proxy needs no vendor key at all
        _with_cluster_key(conf, self.key_file, secrets_file=str(d / "no-such-secrets.toml"))
        env_file = d / "job" / "env"
        target = f"127.0.0.1:{primary.env[RELAY_PORT_ENV]}"
        p = _spawn(d, ["--relay-to", target, "--config", str(conf), "--job-id", self.job_id,
                       "--user", "alice", "--backend", "ibm_fez", "--lanes", "1",
                       "--env-file", str(env_file), "--node", node], env_file, self.job_id, conf)
        self.started.append(p)
        return p

    def stop(self) -> None:
        for p in self.started:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()


@pytest.fixture
def cluster_key(tmp_path: Path) -> Path:
    key = tmp_path / "cluster.key"
    key.write_bytes(secrets.token_bytes(48))
    key.chmod(0o600)
    return key


@pytest.fixture
def job(emulator: Any, tmp_path: Path, cluster_key: Path) -> Iterator[Job]:
    j = Job(emulator, tmp_path, "7001", cluster_key)
    yield j
    j.stop()


def _error_shape(r: requests.Response, status: int, text: str = "") -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert {"code", "message", "more_info"} <= set(body["errors"][0]) and "trace" in body
    assert text in body["errors"][0]["message"], body
    assert "Traceback" not in r.text


def _spans(reader: EmulatorReader, ids: list[str]) -> list[tuple[float, float]]:
    """(created, finished) upstream of each job: the time it held a lane of the device."""
    out = []
    for j in ids:
        deadline = time.time() + 90
        while (doc := reader.get(f"/jobs/{j}"))["status"] in ("Queued", "Running"):
            assert time.time() < deadline, doc
            time.sleep(0.2)
        ts = reader.get(f"/jobs/{j}/metrics")["timestamps"]
        out.append((parse_time(doc["created"]), parse_time(ts["finished"])))
    return out


def test_client_through_relay_and_primary(job: Job, emulator: Any, client_env: Any,
                                          cluster_key: Path) -> None:
    from qiskit_ibm_runtime import QiskitRuntimeService, SamplerV2

    primary = job.primary(lanes=1)
    port = int(primary.env[RELAY_PORT_ENV])
    assert 900 <= port <= 999
    relay = job.relay(primary)
    assert relay.token != primary.token and relay.api != primary.api

    # the unmodified client, from the relay's env file only
    client_env(relay)
    service = QiskitRuntimeService()
    assert [b.name for b in service.backends()] == ["ibm_fez"]
    backend = service.backend("ibm_fez")
    circ = isa(bell(), backend)
    via_relay = SamplerV2(mode=backend).run([circ], shots=500)
    counts = via_relay.result()[0].data.meas.get_counts()
    assert sum(counts.values()) == 500 and counts.get("00", 0) + counts.get("11", 0) > 400

    # one job, one ownership: the primary's tasks see what the relay's tasks created
    client_env(primary)
    assert via_relay.job_id() in {j.job_id() for j in QiskitRuntimeService().jobs(limit=20)}

    # lanes=1: a submission via the relay and one via the primary's own listener, at once,
    # never have two upstream jobs active
    reader = EmulatorReader(emulator.url, emulator.api_key)
    ids: list[str] = []
    hr, hp = relay.bearer(), primary.bearer()
    threads = [threading.Thread(target=lambda p=p, h=h: ids.append(_submit_raw(p, h)))
               for p, h in ((relay, hr), (primary, hp), (relay, hr))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert len(ids) == 3
    spans = _spans(reader, ids)
    assert peak_concurrency(spans) == 1, spans

    # the primary's audit log has the relayed requests, with the relaying node
    records = [json.loads(line) for line in primary.audit_log.read_text().splitlines()]
    relayed = [r for r in records if r.get("via") == "relay"]
    assert relayed and all(r["node"] == "node2" for r in relayed)
    assert any(r.get("upstream_job") == via_relay.job_id() for r in relayed)
    assert not any(r.get("via") for r in records if r.get("method") == "POST"
                   and r.get("path") == "/identity/token")

    # nothing of the centre's in the relay: command line, environment, env file, log
    key = cluster_key.read_bytes()
    secrets_seen = [emulator.api_key.encode(), key, key.hex().encode(),
                    relay_token(key, job.job_id).encode()]
    cmdline = Path(f"/proc/{relay.proc.pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{relay.proc.pid}/environ").read_bytes()
    assert relay.stop() == 0
    texts = [cmdline, environ, relay.env_file.parent.joinpath("summary.json").read_bytes(),
             relay.output().encode(), relay.audit_log.read_bytes(),
             "".join(f"{k}={v}\n" for k, v in relay.env.items()).encode()]
    for secret in secrets_seen:
        for text in texts:
            assert secret not in text
    assert not relay.env_file.exists()
    summary = json.loads(relay.env_file.parent.joinpath("summary.json").read_text())
    assert summary["upstream_jobs"] == 0 and summary["requests"] > 0
    assert primary.stop() == 0
    primary_summary = json.loads(primary.summary.read_text())
    assert primary_summary["upstream_jobs"] == 4


def signed(key: bytes, job_id: str, method: str, target: str, length: int | None = None,
           node: str = "node2", run: int = 0, **kw: Any) -> dict[str, str]:
    """A relay's headers for one request (per-request signature: issue 24 item 4)."""
    return {RELAY_HEADER: sign_request(key, job_id, run, method, target, length, node, **kw),
            NODE_HEADER: node}


def test_relay_listener_auth(job: Job, cluster_key: Path) -> None:
    primary = job.primary()
    relay_url = f"http://127.0.0.1:{primary.env[RELAY_PORT_ENV]}/api/v1"
    key = cluster_key.read_bytes()
    good = signed(key, job.job_id, "GET", "/api/v1/backends")
    r = requests.get(relay_url + "/backends", headers=good, timeout=30)
    assert r.status_code == 200 and [d["name"] for d in r.json()["devices"]] == ["ibm_fez"]

    bearer = primary.bearer()
    for headers in ({}, {RELAY_HEADER: "0" * 64},
                    {RELAY_HEADER: relay_token(key, job.job_id)},  # the old static header
                    good,  # replayed
                    signed(key, job.job_id, "GET", "/api/v1/backends", run=1),  # other run
                    signed(key, job.job_id, "GET", "/api/v1/backends",
                           now=time.time() - 120),  # too old
                    signed(key, job.job_id, "GET", "/api/v1/jobs"),  # another request's
                    signed(key, "7002", "GET", "/api/v1/backends"),
                    {RELAY_HEADER: relay_token(key, "7002")},  # another job's relay
                    {RELAY_HEADER: relay_token(b"another key" * 4, job.job_id)},
                    bearer, {"Authorization": f"apikey {primary.token}"}):
        _error_shape(requests.get(relay_url + "/backends", headers=headers, timeout=10), 401)
    # no IAM exchange on the relay listener, even with the header
    form = f"grant_type=urn%3Aibm%3Aparams%3Aoauth%3Agrant-type%3Aapikey&apikey={primary.token}"
    r = requests.post(relay_url.removesuffix("/api/v1") + "/identity/token",
                      headers={**signed(key, job.job_id, "POST", "/identity/token", len(form)),
                               "Content-Type": "application/x-www-form-urlencoded"},
                      data=form, timeout=10)
    _error_shape(r, 404)
    # the relay header is refused on the job-facing listener, even with the job's token
    good = signed(key, job.job_id, "GET", "/api/v1/backends")
    _error_shape(requests.get(primary.api + "/backends", headers={**bearer, **good},
                              timeout=10), 401, RELAY_HEADER)
    assert requests.get(primary.api + "/backends", headers=bearer, timeout=10).ok
    # a relay's own listener refuses the header too (nobody can chain relays by hand)
    relay = job.relay(primary)
    _error_shape(requests.get(relay.api + "/backends", headers={**relay.bearer(), **good},
                              timeout=10), 401)
    _error_shape(requests.get(relay.api + "/backends", headers=bearer, timeout=10), 401)


def _recv_all(sock: socket.socket) -> bytes:
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def test_relay_listener_connection_guard(job: Job, cluster_key: Path) -> None:
    """The relay listener, reachable from every node, has the job port's connection guard:
    connections from unprivileged source ports (any user on any node) share the neighbours'
    cap, a failed relay proof closes the connection, and the job's relays (root, privileged
    source ports) are served while a neighbour holds every other slot."""
    primary = job.primary(extra="max_connections_others = 3\nclient_header_timeout_seconds = 20")
    addr = ("127.0.0.1", int(primary.env[RELAY_PORT_ENV]))
    idle = [socket.create_connection(addr, timeout=10) for _ in range(3)]
    try:
        time.sleep(0.3)
        with socket.create_connection(addr, timeout=10) as extra:
            assert _recv_all(extra).startswith(b"HTTP/1.1 503"), "4th neighbour connection"
        relay = job.relay(primary)
        r = requests.get(relay.api + "/backends", headers=relay.bearer(), timeout=30)
        assert r.status_code == 200, r.text
        idle.pop().close()
        time.sleep(0.3)
        with socket.create_connection(addr, timeout=10) as bad:
            bad.sendall(("GET /api/v1/backends HTTP/1.1\r\nHost: x\r\n"
                         f"{RELAY_HEADER}: {relay_token(cluster_key.read_bytes(), job.job_id)}"
                         "\r\n\r\n").encode())
            reply = _recv_all(bad)  # returns only because the proxy closed the connection
        assert reply.startswith(b"HTTP/1.1 401") and b"Connection: close" in reply
    finally:
        for s in idle:
            s.close()


def test_relay_without_primary(job: Job) -> None:
    primary = job.primary()
    relay = job.relay(primary)
    h = relay.bearer()
    assert requests.get(relay.api + "/backends", headers=h, timeout=30).ok
    assert primary.stop() == 0
    r = requests.get(relay.api + "/backends", headers=h, timeout=30)
    _error_shape(r, 502, "first node")
    r = requests.post(relay.api + "/jobs", headers=h, json={"program_id": "sampler"},
                      timeout=30)
    _error_shape(r, 502)
    assert relay.stop() == 0
    assert "Traceback" not in relay.output()


def test_relay_refuses_bad_cluster_key(job: Job, cluster_key: Path) -> None:
    cluster_key.chmod(0o640)
    d = job.root / "bad"
    d.mkdir()
    conf = write_config(job.emulator, d, f'relay_ports = "{RELAY_PORTS}"')
    _with_cluster_key(conf, cluster_key)
    r = subprocess.run(
        [sys.executable, "-m", "qproxy", "serve", "--config", str(conf), "--job-id", "1",
         "--user", "u", "--backend", "ibm_fez", "--lanes", "1", "--end-time", "9999999999",
         "--env-file", str(d / "env"), "--relay-listen", "127.0.0.1"],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "cluster key" in r.stderr and "group/other" in r.stderr
    assert not (d / "env").exists()
