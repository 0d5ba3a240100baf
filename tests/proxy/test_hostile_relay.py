"""Issue 24 item 1: a multi-node job's relay (`qproxy serve --relay-to`, on every node but
the job's first) attacked as an unprivileged local user (uid 65534, tests/support/attacker.py)
like test_hostile.py attacks the job's port: it has the same neighbour controls now
(qproxy.proxy.neighbours). Before, every request got a full audit record (~2 KB per
unauthenticated one), no 429, no connection cap, no header or keep-alive timeout, an unkeyed
chain without a size cap, and a 500 with a traceback in proxy.log once the log could not be
written. Real processes (emulator, primary, relay) on loopback; bounded loops."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from . import hostile
from .conftest import Proxy
from .test_hostile import api_error, records
from .test_relay import Job

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(os.geteuid() != 0, reason="the relay listener binds a privileged port"),
]


@pytest.fixture
def job(emulator: Any, tmp_path: Path) -> Iterator[Job]:
    key = tmp_path / "cluster.key"
    key.write_bytes(os.urandom(48))
    key.chmod(0o600)
    j = Job(emulator, tmp_path, "7101", key)
    yield j
    j.stop()


def _port(p: Proxy) -> int:
    return int(p.root.rsplit(":", 1)[1])


def test_relay_unauthenticated_flood_is_summarised(job: Job) -> None:
    """A neighbour's 8 KB junk requests on the relay's port: counted and summarised (<= 200
    bytes of audit log per request amortised; it was ~2 KB each), 429 past its bucket; the
    job's own requests through the relay still work and are audited, in a keyed chain."""
    primary = job.primary()
    relay = job.relay(primary, extra="unauth_rate = 5\nunauth_burst = 20")
    h = relay.bearer()
    assert requests.get(relay.api + "/backends", headers=h, timeout=60).ok
    before = relay.audit_log.stat().st_size
    # 1,500 at most, 150/s (past the bucket's 5/s), 15 s at most: one summary window and more
    flood = hostile.attacker_result(
        hostile.attacker("flood", str(_port(relay)), "1500", "15", "", "150"), 60)["flood"]
    grew = relay.audit_log.stat().st_size - before
    sent = flood["sent"]
    print(f"relay: {sent} unauthenticated 8 KB requests {flood['statuses']} in "
          f"{flood['seconds']} s -> {grew} audit bytes ({grew / max(sent, 1):.1f} B/request)")
    assert sent >= 100, flood
    assert grew / sent <= 200, (grew, sent)
    assert flood["statuses"].get("429", 0) > 0 and set(flood["statuses"]) <= {"401", "429"}
    assert requests.get(relay.api + "/backends", headers=h, timeout=30).ok
    assert relay.stop() == 0
    recs = records(relay)
    summaries = [r for r in recs if r["event"] == "unauthenticated"]
    assert sum(r["requests"] for r in summaries) == sent
    assert sum(r["uids"].get(str(hostile.NOBODY), 0) for r in summaries) == sent
    summary_bytes = sum(len(x) + 1 for x in relay.audit_log.read_bytes().splitlines()
                        if b'"event":"unauthenticated"' in x)
    print(f"relay: {summary_bytes} bytes of summaries for {sent} requests")
    assert summary_bytes / sent <= 200, (summary_bytes, sent)
    assert len([r for r in recs if r["event"] == "request"]) == 3  # the job's own
    assert recs[0]["chain"] == "hmac-sha256"
    v = subprocess.run([sys.executable, "-m", "qproxy", "audit", "verify", str(relay.audit_log),
                        "--config", str(relay.config)], capture_output=True, text=True)
    assert v.returncode == 0 and "HMAC" in v.stdout + v.stderr, v.stderr


def test_relay_connection_cap_and_timeouts(job: Job) -> None:
    """A neighbour's slowloris on the relay's port: at most max_connections_others held, the
    rest refused with 503, the held ones closed by the header timeout; an idle keep-alive
    connection is closed; the job's requests through the relay go on meanwhile."""
    primary = job.primary()
    relay = job.relay(primary, extra=("client_header_timeout_seconds = 1\n"
                                      "keepalive_timeout_seconds = 2\nmax_connections_others = 4"))
    h = relay.bearer()
    assert requests.get(relay.api + "/backends", headers=h, timeout=60).ok
    attacker = hostile.slowloris(_port(relay), 12, 6.0)
    time.sleep(0.5)
    lat = []
    for _ in range(10):
        t0 = time.monotonic()
        assert requests.get(relay.api + "/backends", headers=h, timeout=30).status_code == 200
        lat.append(time.monotonic() - t0)
    conns = hostile.slowloris_result(attacker, 30)
    held = [c for c in conns if not c["refused"]]
    refused = [c for c in conns if c["refused"]]
    print(f"relay: slowloris held {len(held)}, refused {len(refused)}; job's latencies "
          f"max {max(lat):.3f} s")
    assert len(held) <= 4 and len(refused) >= 8, conns
    assert all(c["closed"] is not None and c["closed"] < 4.5 for c in held), held
    s = socket.create_connection(("127.0.0.1", _port(relay)))
    s.sendall(b"GET /api/v1/backends HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(8)
    t0, data = time.monotonic(), b""
    while time.monotonic() - t0 < 8:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    assert data.startswith(b"HTTP/1.1 401") and time.monotonic() - t0 < 5.5, data[:100]


def test_relay_audit_unwritable_is_503_not_500(job: Job) -> None:
    """The relay's audit filesystem full: the job's authenticated requests get a clear 503 in
    the API's error shape (not a 500 and a traceback in proxy.log), unauthenticated ones keep
    their 401; once space is back, work resumes and the gap is recorded."""
    mounted: list[Path] = []

    def tiny_audit_fs(d: Path) -> None:
        mnt = d / "audit"
        mnt.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(mnt)

    primary = job.primary()
    try:
        relay = job.relay(primary, before=tiny_audit_fs)
        h = relay.bearer()
        r = requests.get(relay.api + "/backends", headers=h, timeout=60)
        assert r.ok, (r.text, relay.output()[-2000:])
        filler = mounted[0] / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for _ in range(512):
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        statuses = []
        for _ in range(60):
            r = requests.get(relay.api + "/backends", headers=h, timeout=30)
            statuses.append(r.status_code)
            if r.status_code != 200:
                break
        print(f"relay with a full audit fs: {statuses[-5:]}")
        assert statuses[-1] == 503 and 500 not in statuses, statuses
        api_error(r, 503, "cannot be written")
        api_error(requests.get(relay.api + "/backends", timeout=10), 401)
        filler.unlink()
        time.sleep(1.2)
        assert requests.get(relay.api + "/backends", headers=h, timeout=30).ok
        assert relay.stop() == 0
        events = [r["event"] for r in records(relay)]
        assert "audit_gap" in events and events[-1] == "close"
        assert "Traceback" not in relay.output()
    finally:
        job.stop()
        for m in mounted:
            subprocess.run(["umount", "-l", str(m)], check=False)


# Replays one captured relayed request N times on one keep-alive connection (reconnecting when
# the primary closes it), as nobody; prints the statuses seen.
_REPLAY = hostile._DROP + r'''
import json, socket, sys, time
port, n, raw = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
statuses, sock, t0 = {}, None, time.monotonic()
for _ in range(n):
    if time.monotonic() - t0 > 30:
        break
    if sock is None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(raw)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError
            head += chunk
        code = head.split(b" ")[1].decode()
    except OSError:
        code = "reset"
    statuses[code] = statuses.get(code, 0) + 1
    sock.close()
    sock = None
print(json.dumps(statuses))
'''


def test_replayed_relay_requests_are_refused_cheaply(job: Job) -> None:
    """Issue 24 item 4: a relayed request seen on the network, replayed (here 300 times, by
    uid 65534): the first use was the relay's, every replay gets 401 (429 past the bucket),
    counted in the primary's unauthenticated summary, never one audit record each."""
    from qproxy.proxy.relay.auth import NODE_HEADER, RELAY_HEADER, RELAY_PORT_ENV, sign_request

    primary = job.primary()
    port = int(primary.env[RELAY_PORT_ENV])
    key = job.key_file.read_bytes()
    sig = sign_request(key, job.job_id, 0, "GET", "/api/v1/backends", None, "node2")
    raw = (f"GET /api/v1/backends HTTP/1.1\r\nHost: x\r\n{RELAY_HEADER}: {sig}\r\n"
           f"{NODE_HEADER}: node2\r\n\r\n")
    first = requests.get(f"http://127.0.0.1:{port}/api/v1/backends", timeout=60,
                         headers={RELAY_HEADER: sig, NODE_HEADER: "node2"})
    assert first.status_code == 200, first.text  # the relay's own use
    before = primary.audit_log.stat().st_size
    proc = subprocess.run([sys.executable, "-c", _REPLAY, str(port), "300", raw],
                          capture_output=True, text=True, timeout=90)
    statuses = orjson.loads(proc.stdout.strip().splitlines()[-1])
    assert primary.stop() == 0
    recs = records(primary)
    summaries = [r for r in recs if r["event"] == "unauthenticated"]
    summary_bytes = sum(len(x) + 1 for x in primary.audit_log.read_bytes().splitlines()
                        if b'"event":"unauthenticated"' in x)
    n = sum(statuses.values())
    print(f"replays: {statuses}; audit: {summary_bytes} bytes of summaries, "
          f"{primary.audit_log.stat().st_size - before} bytes in all")
    assert n >= 100 and set(statuses) <= {"401", "429"}, statuses
    assert sum(r["requests"] for r in summaries) == n
    assert summary_bytes / n <= 200
    relayed = [r for r in recs if r["event"] == "request" and r.get("via") == "relay"]
    assert len(relayed) == 1 and relayed[0]["status"] == 200
