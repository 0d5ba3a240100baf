"""Attacks by an unprivileged local user on a job's proxy, each against a real `qproxy serve`
in front of the real emulator (docs/security.md). Every one of them succeeded before the
fixes (checked on the base commit); each loop is bounded by count and by time."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import requests

from qproxy.node.audit import record_hash

from . import hostile
from .conftest import Proxy, start_proxy
from .test_e2e import _submit_raw, up_job, upstream

pytestmark = pytest.mark.timeout(240)


def bearer(p: Proxy) -> dict[str, str]:
    """The job's JWT, waiting for the proxy to serve (it loads at a lower priority, and the
    session's emulator warms up its lanes on both cores for ~30 s after it starts)."""
    r = requests.post(p.root + "/identity/token", timeout=120, data={
        "grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": p.token})
    r.raise_for_status()
    return {"Authorization": "Bearer " + r.json()["access_token"]}


def records(p: Proxy) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in p.audit_log.read_bytes().splitlines()]


def api_error(r: requests.Response, status: int, text: str = "") -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert {"code", "message", "more_info"} <= set(body["errors"][0]) and "trace" in body
    assert text in body["errors"][0]["message"], body
    return str(body["errors"][0]["message"])


def vmhwm_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))


# ---------------------------------------------------------------------------- 1. audit
def test_unauthenticated_flood_is_summarised_not_logged(proxy_factory: Any) -> None:
    """8 KB junk paths on one keep-alive connection: the audit log grows by a summary
    record, not 16.5 KB a request; past the bucket they get 429; long paths of the job's own
    requests are cut with their length and hash."""
    p: Proxy = proxy_factory("7001", proxy_extra="unauth_rate = 5\nunauth_burst = 20")
    h = bearer(p)
    before = p.audit_log.stat().st_size
    junk = "/" + "%01" * 2700  # ~8 KB
    codes: dict[int, int] = {}
    s = requests.Session()
    t0, n = time.monotonic(), 0
    while n < 400 and time.monotonic() - t0 < 30:
        r = s.get(p.root + junk, timeout=10)
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
        n += 1
    grew = p.audit_log.stat().st_size - before
    # one summary record (~700 bytes) per 10 s window, whatever the number of requests
    assert grew / n < 20 and grew < 800 * (2 + (time.monotonic() - t0) / 10), (n, grew)
    assert codes.get(429, 0) > 0 and set(codes) <= {401, 429}, codes
    assert s.get(p.api + "/jobs/" + "x" * 8000, headers=h, timeout=10).status_code == 404
    assert p.stop() == 0
    recs = records(p)
    summaries = [r for r in recs if r["event"] == "unauthenticated"]
    assert sum(r["requests"] for r in summaries) == n
    assert summaries[0]["statuses"]["429"] > 0 and len(summaries[0]["first"]) < 100
    long = next(r for r in recs if r["event"] == "request" and r["status"] == 404)
    assert long["path_len"] > 8000 and len(long["path"]) < 400 and "sha256:" in long["path"]
    assert max(len(x) for x in p.audit_log.read_bytes().splitlines()) < 2000


def test_audit_cap_then_503_and_one_final_record(proxy_factory: Any) -> None:
    p: Proxy = proxy_factory("7002", proxy_extra="audit_max_bytes = 6000")
    h = bearer(p)
    t0, n = time.monotonic(), 0
    while n < 200 and time.monotonic() - t0 < 60:
        r = requests.get(p.api + "/backends", headers=h, timeout=30)
        n += 1
        if r.status_code != 200:
            break
    msg = api_error(r, 503, "size limit")
    assert "refuses work it cannot audit" in msg
    api_error(requests.get(p.api + "/backends", headers=h, timeout=10), 503)
    api_error(requests.get(p.api + "/backends", timeout=10), 401)  # still answering
    assert p.stop() == 0
    recs = records(p)
    assert [r["event"] for r in recs].count("audit_full") == 1
    assert [r["event"] for r in recs][-2:] == ["summary", "close"]
    assert p.audit_log.stat().st_size < 6000 + 64 * 1024


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    mnt = tmp_path / "px" / "audit"
    mnt.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_audit_disk_full_is_503_not_500(emulator: Any, tiny_disk: Path) -> None:
    p = start_proxy(emulator, tiny_disk.parent, "7003")
    try:
        h = bearer(p)
        assert requests.get(p.api + "/backends", headers=h, timeout=30).status_code == 200
        filler = tiny_disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # fill the disk (ENOSPC ends it)
            for _ in range(512):
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        statuses = []  # the log's last page may still take a few records
        for _ in range(60):
            r = requests.get(p.api + "/backends", headers=h, timeout=10)
            statuses.append(r.status_code)
            if r.status_code != 200:
                break
        assert statuses[-1] == 503 and 500 not in statuses, statuses
        api_error(r, 503, "cannot be written")
        api_error(requests.get(p.api + "/backends", timeout=10), 401)
        filler.unlink()  # the admin frees space: work resumes, the gap is recorded
        time.sleep(1.2)
        assert requests.get(p.api + "/backends", headers=h, timeout=30).status_code == 200
        assert p.stop() == 0
        events = [r["event"] for r in records(p)]
        assert "audit_gap" in events and events[-1] == "close"
        assert "Traceback" not in p.output()
    finally:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def test_audit_chain_is_keyed_and_needs_its_final_record(proxy_factory: Any) -> None:
    """Re-chaining an edited log with sha256 (all an attacker without the key can do) is
    detected, and so is a log cut before its final record."""
    p: Proxy = proxy_factory("7004")
    requests.get(p.api + "/backends", headers=bearer(p), timeout=30)
    assert p.stop() == 0

    def verify(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "qproxy", "audit", "verify", str(path),
                               "--config", str(p.config)], capture_output=True, text=True)

    assert verify(p.audit_log).returncode == 0, verify(p.audit_log).stderr
    key = p.dir / "audit.key"
    assert key.stat().st_mode & 0o777 == 0o600
    recs = records(p)
    forged, prev = [], "0" * 64
    for r in recs:
        r = {**r, "prev": prev}
        if r["event"] == "request":
            r["status"] = 418
        r["hash"] = record_hash(r)
        prev = r["hash"]
        forged.append(orjson.dumps(r, option=orjson.OPT_SORT_KEYS))
    bad = p.dir / "forged.jsonl"
    bad.write_bytes(b"\n".join(forged) + b"\n")
    assert verify(bad).returncode == 1 and "modified" in verify(bad).stderr
    cut = p.dir / "cut.jsonl"
    cut.write_bytes(b"\n".join(p.audit_log.read_bytes().splitlines()[:-1]) + b"\n")
    r = verify(cut)
    assert r.returncode == 1 and "no final record" in r.stderr


# ---------------------------------------------------------------------------- 2. the key
def test_vendor_key_never_reaches_a_users_listener(emulator: Any, tmp_path: Path) -> None:
    """A local user binds the port the config names (the emulator is down): the proxy must
    not send the centre's key there; nor follow a root listener's redirect to it."""
    listener, port = hostile.start_listener(12)
    fake = SimpleNamespace(url=f"http://127.0.0.1:{port}", api_key=emulator.api_key,
                           instance=emulator.instance)
    p = start_proxy(fake, tmp_path / "a", "7005")
    try:
        r = requests.get(p.api + "/backends", headers=bearer(p), timeout=30)
        api_error(r, 502, "not root")
    finally:
        p.stop()
    assert emulator.api_key not in hostile.listener_received(listener, 30)

    from aiohttp import web

    listener, port = hostile.start_listener(12)

    async def redirect(_r: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{port}/identity/token")

    async def serve_redirect() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", redirect)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    loop = asyncio.new_event_loop()
    runner, rport = loop.run_until_complete(serve_redirect())
    import threading

    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    try:
        fake.url = f"http://127.0.0.1:{rport}"
        p = start_proxy(fake, tmp_path / "b", "7006")
        r = requests.get(p.api + "/backends", headers=bearer(p), timeout=30)
        assert r.status_code == 502, r.text
        p.stop()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
    assert emulator.api_key not in hostile.listener_received(listener, 30)


# ---------------------------------------------------------------------------- 3. connections
def test_slow_and_idle_connections_of_a_neighbour(proxy_factory: Any) -> None:
    p: Proxy = proxy_factory("7007", proxy_extra=(
        "client_header_timeout_seconds = 1\nkeepalive_timeout_seconds = 2\n"
        "max_connections_others = 4"))
    port = int(p.root.rsplit(":", 1)[1])
    h = bearer(p)
    attacker = hostile.slowloris(port, 12, 6.0)
    time.sleep(0.5)
    lat = []
    for _ in range(20):  # the job's own requests meanwhile
        t0 = time.monotonic()
        assert requests.get(p.api + "/backends", headers=h, timeout=10).status_code == 200
        lat.append(time.monotonic() - t0)
    conns = hostile.slowloris_result(attacker, 30)
    refused = [c for c in conns if c["refused"]]
    held = [c for c in conns if not c["refused"]]
    assert len(held) <= 4 and len(refused) >= 8, conns
    assert all(c["closed"] is not None and c["closed"] < 3.5 for c in held), held
    assert sorted(lat)[-1] < 2.0, lat
    # an idle keep-alive connection is closed after keepalive_timeout_seconds
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /api/v1/backends HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(6)
    t0, data = time.monotonic(), b""
    while time.monotonic() - t0 < 6:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"HTTP/1.1 401") and time.monotonic() - t0 < 4.5
    s.close()


def test_slow_body_is_timed_out(proxy_factory: Any) -> None:
    p: Proxy = proxy_factory("7008", proxy_extra="client_body_timeout_seconds = 1")
    port = int(p.root.rsplit(":", 1)[1])
    tok = bearer(p)["Authorization"]
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: {tok}\r\n"
              "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode())
    s.settimeout(5)
    t0 = time.monotonic()
    data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 3, data[:200]
    s.close()


# ---------------------------------------------------------------------------- 4. memory
def test_parallel_max_size_posts_keep_rss_bounded(proxy_factory: Any) -> None:
    """100 parallel ~1.9 MB submissions (the test config's max is 2 MB): bodies are read
    one lane / one in-flight budget at a time, so the peak RSS grows by a few bodies, not by
    100 of them (before: +~600 MB, every body read, parsed and re-serialised at once)."""
    import aiohttp

    p: Proxy = proxy_factory("7009", lanes=1, proxy_extra="inflight_bytes = 4000000")
    h = bearer(p)
    body = b'{"program_id": "no-such-program", "params": {"blob": "' + b"x" * 1_900_000 + b'"}}'
    requests.get(p.api + "/backends", headers=h, timeout=30)
    base = vmhwm_kb(p.proc.pid)

    async def flood() -> list[int]:
        timeout = aiohttp.ClientTimeout(total=180)
        async with aiohttp.ClientSession(timeout=timeout,
                                         connector=aiohttp.TCPConnector(limit=100)) as s:
            async def one() -> int:
                async with s.post(p.api + "/jobs", data=body,
                                  headers={**h, "Content-Type": "application/json"}) as r:
                    await r.read()
                    return r.status
            return list(await asyncio.gather(*(one() for _ in range(100))))

    statuses = asyncio.run(flood())
    grown_mb = (vmhwm_kb(p.proc.pid) - base) / 1024
    assert all(400 <= s < 500 for s in statuses), statuses  # upstream's refusal, relayed
    assert grown_mb < 50, f"peak RSS grew by {grown_mb:.0f} MB"
    print(f"peak RSS growth under 100 parallel 1.9 MB POSTs: {grown_mb:.1f} MB")


# ---------------------------------------------------------------------------- 5./6. own work
def test_delete_cannot_erase_usage_and_tags_stay_ours(proxy_factory: Any,
                                                      emulator: Any) -> None:
    p: Proxy = proxy_factory("7010", lanes=2)
    h = bearer(p)
    forged = ["SLURM_JOB:999", " slurm_job:999", "\u0455lurm_job:999", "slurm\u200b_user:x",
              "mine"]
    job = _submit_raw(p, h, tags=forged)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        st = requests.get(f"{p.api}/jobs/{job}", headers=h, timeout=10).json()["status"]
        if st in ("Completed", "Failed", "Cancelled"):
            break
        time.sleep(0.3)
    assert st == "Completed"
    seconds = up_job(emulator, job, "/metrics")["usage"]["quantum_seconds"]
    assert seconds > 0
    tags = up_job(emulator, job)["tags"]
    assert requests.delete(f"{p.api}/jobs/{job}", headers=h, timeout=30).status_code < 300
    gone = upstream(emulator).get(f"{emulator.url}/api/v1/jobs/{job}/metrics", timeout=10)
    assert gone.status_code == 404  # upstream forgot it...
    assert p.stop() == 0
    summary = json.loads(p.summary.read_text())
    assert summary["quantum_seconds"] == pytest.approx(seconds, abs=1e-3)  # ...we did not
    assert '"kind":"usage"' in p.ledger.read_text()
    assert sorted(tags) == sorted(["mine", "slurm_job:7010", "slurm_user:alice"]), tags


def test_sessions_queries_workloads_and_bad_credentials(proxy_factory: Any,
                                                        emulator: Any) -> None:
    p: Proxy = proxy_factory("7011", lanes=1)
    other: Proxy = proxy_factory("7012", user="bob")
    h = bearer(p)
    job = _submit_raw(p, h)
    r = requests.put(f"{p.api}/jobs/{job}/tags", headers=h, timeout=10,
                     json={"tags": ["SLURM_USER:bob", "ok"], "extra": "x"})
    assert r.status_code < 300
    assert sorted(up_job(emulator, job)["tags"]) == ["ok", "slurm_job:7011", "slurm_user:alice"]
    requests.post(f"{p.api}/jobs/{job}/cancel", headers=h, timeout=10)
    r = requests.post(p.api + "/sessions", headers=h, json={"mode": "dedicated"}, timeout=30)
    assert r.status_code in (200, 201), r.text
    sid = r.json()["id"]
    doc = upstream(emulator).get(f"{emulator.url}/api/v1/sessions/{sid}", timeout=10).json()
    assert doc["mode"] == "batch"  # [resources.ibm_fez].dedicated_sessions is false
    api_error(requests.post(p.api + "/sessions", headers=h, json={"mode": "batch"},
                            timeout=30), 429, "open session")
    api_error(requests.patch(f"{p.api}/sessions/{sid}", headers=h, timeout=10,
                             json={"accepting_jobs": True, "backend": "fake_torino"}), 400)
    r = requests.patch(f"{p.api}/sessions/{sid}", headers=h, timeout=10,
                       json={"max_ttl": 10**9})
    assert r.status_code < 300, r.text
    assert upstream(emulator).get(f"{emulator.url}/api/v1/sessions/{sid}",
                                  timeout=10).json().get("max_ttl", 0) <= 3600
    r = requests.patch(f"{p.api}/sessions/{sid}", headers=h, timeout=10,
                       json={"accepting_jobs": False})  # what Session.close() sends
    assert r.status_code < 300, r.text
    r = requests.post(p.api + "/sessions", headers=h, json={"mode": "batch"}, timeout=30)
    assert r.status_code in (200, 201), r.text  # the slot is free again
    # queries: only what a route allows reaches upstream
    r = requests.get(p.api + "/instances/usage?instance=crn:other&x=1", headers=h, timeout=10)
    assert r.status_code == 200
    # workloads: only own work, in our own shape
    _submit_raw(other, bearer(other))
    w = requests.get(p.api + "/workloads?limit=5", headers=h, timeout=30).json()
    assert set(w) == {"workloads", "next", "previous"}
    assert [x["id"] for x in w["workloads"]] == [job] and w["workloads"][0]["backend"] == "ibm_fez"
    # malformed credentials: a 401 in the API's shape, no traceback
    for bad in (b"apikey \xff\xfe", b"Bearer \xc3\x28", b"apikey " + b"a" * 5000):
        api_error(requests.get(p.api + "/backends", headers={"Authorization": bad},
                               timeout=10), 401)
    assert p.stop() == 0 and other.stop() == 0
    usage = next(r for r in records(p) if r.get("path", "").endswith("/instances/usage"))
    assert usage["query_dropped"] == ["instance", "x"]
    assert "Traceback" not in p.output()


# ---------------------------------------------------------------------------- 7. token exchange
def test_neighbours_junk_cannot_block_the_token_exchange(proxy_factory: Any) -> None:
    """A neighbour (uid 65534) floods the job's port with junk, every other request a token
    exchange with a wrong key, at 175 req/s (issue 24's figure), far past the unauthenticated
    rate (20/s). The job's exchanges are judged by the token: 19 of 19 from the job's side
    and 19 of 19 from the flooding uid itself succeed (before: the one shared bucket was
    empty and they got 429; 4 and 3 of 19 succeeded); the junk still gets 429 and is
    summarised, by uid."""
    p: Proxy = proxy_factory("7013")
    port = int(p.root.rsplit(":", 1)[1])
    bearer(p)  # serving
    flooder = hostile.attacker("flood", str(port), "100000", "9", "token", "175")
    time.sleep(1.5)  # the burst (50) is spent in well under a second at this rate
    theirs = hostile.attacker("exchange", str(port), p.token, "19", "0.2")
    ok, t0 = 0, time.monotonic()
    data = {"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": p.token}
    for _ in range(19):
        r = requests.post(p.root + "/identity/token", data=data, timeout=10)
        ok += r.status_code == 200 and "access_token" in r.json()
        time.sleep(0.2)
    assert time.monotonic() - t0 < 7.5  # all of it while the flood went on
    same_uid = hostile.attacker_result(theirs, 60)["exchange"]["statuses"]
    flood = hostile.attacker_result(flooder, 60)["flood"]
    rate = flood["sent"] / flood["seconds"]
    print(f"neighbour: {rate:.0f} junk req/s {flood['statuses']}; job's exchanges ok: "
          f"{ok}/19, from the flooding uid: {same_uid}")
    # the bucket was kept empty (on a loaded machine the flood may reach less than 175/s)
    assert rate > 40 and flood["statuses"].get("429", 0) > flood["sent"] / 3, flood
    assert set(flood["statuses"]) <= {"401", "429"}, flood
    assert ok == 19 and same_uid == {"200": 19}, (ok, same_uid)
    assert p.stop() == 0
    recs = records(p)
    issued = [r for r in recs if r["event"] == "request" and r["path"] == "/identity/token"]
    assert len(issued) >= 38 + 1 and all(r["status"] == 200 for r in issued)
    summaries = [r for r in recs if r["event"] == "unauthenticated"]
    assert sum(r["requests"] for r in summaries) == flood["sent"]
    assert sum(r["uids"].get(str(hostile.NOBODY), 0) for r in summaries) == flood["sent"]


def test_unprivileged_user_is_nobody() -> None:
    """The attacks above run as uid 65534: check the helper really drops privileges."""
    out = subprocess.run([sys.executable, "-c", hostile._DROP + "import os; print(os.getuid())"],
                         capture_output=True, text=True, check=True).stdout
    assert int(out) == hostile.NOBODY != os.getuid()
