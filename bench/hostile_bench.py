"""Benchmark 9: what a hostile neighbour (another local user, no token) costs a job.

- audit bytes per unauthenticated request, amortised (baseline: one authenticated request's
  record, measured in the same run);
- the proxy's peak RSS under 100 parallel max-size submissions (baseline: one submission);
- the job's p99 latency while a neighbour (uid nobody) holds many slow connections and
  reopens them as they are closed, against the quiet p99, in alternating rounds.
The first and the last also against a multi-node job's relay (``qproxy serve --relay-to``
in front of the job's primary, both on this host; issue 24: the relay had none of the job
port's controls). And the job's own authenticated 404s with ever new 8 KB ids: audit bytes
per request (issue 24 item 6: ~1.9 KB each before repeated errors were summarised).
Every loop is bounded by count and time.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import aiohttp
import requests

from bench import common

# Runs as nobody: keep `n` connections open, each dribbling header lines, reopening those
# the proxy closes, for `seconds`; prints how many connections it opened.
NEIGHBOUR = r'''
import os, socket, sys, time
os.setgroups([]); os.setgid(65534); os.setuid(65534)
port, n, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
end, opened, conns = time.monotonic() + seconds, 0, []
while time.monotonic() < end:
    while len(conns) < n and opened < 100000:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=1)
            s.setblocking(False)
            s.send(b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\n")
            conns.append(s); opened += 1
        except OSError:
            break
    alive = []
    for s in conns:
        try:
            if s.recv(4096) == b"":
                s.close(); continue
        except BlockingIOError:
            pass
        except OSError:
            s.close(); continue
        try:
            s.send(b"X: 1\r\n")
        except OSError:
            pass
        alive.append(s)
    conns = alive
    time.sleep(0.2)
print(opened)
'''


def _bearer(px: common.Proxy) -> dict[str, str]:
    r = requests.post(px.url + "/identity/token", timeout=120, data={
        "grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": px.token})
    r.raise_for_status()
    return {"Authorization": "Bearer " + r.json()["access_token"]}


Serve = Callable[..., AbstractContextManager[common.Proxy]]
TARGETS: dict[str, Serve] = {"": common.proxy, " (relay)": common.relay}


def audit_bytes(cfg: Path, work: Path, n: int, seconds: float,
                where: str = "") -> dict[str, Any]:
    with TARGETS[where](cfg, work, job_id="91") as px:
        h = _bearer(px)
        api = px.url + "/api/v1"
        s = requests.Session()
        s.get(api + "/jobs", headers=h, timeout=30)
        junk = "/" + "%01" * 2700
        t0, done = time.monotonic(), 0
        while done < n and time.monotonic() - t0 < seconds:
            s.get(px.url + junk, timeout=10)
            done += 1
        audit = px.workdir / "audit.jsonl"
    recs = [json.loads(x) for x in audit.read_bytes().splitlines()]
    lines = audit.read_bytes().splitlines()
    unauth = sum(len(raw) + 1 for raw, r in zip(lines, recs, strict=True)
                 if r["event"] == "unauthenticated")
    counted = sum(r["requests"] for r in recs if r["event"] == "unauthenticated")
    one_auth = next(len(raw) + 1 for raw, r in zip(lines, recs, strict=True)
                    if r["event"] == "request")
    per = unauth / max(1, counted)
    return {"bench": f"9. audit bytes / unauth request{where}", "requests": counted,
            "baseline_auth_record_bytes": one_auth, "subject_bytes_per_request": round(per, 2),
            "ratio": round(per / one_auth, 4), "target": "<= 200 bytes amortised",
            "ok": per <= 200 and counted >= done}


def own_404_bytes(cfg: Path, work: Path, n: int, seconds: float) -> dict[str, Any]:
    """The job's own authenticated GETs of jobs with ever new 8 KB ids (404 each): audit
    bytes per request with the log's closing records, against one record in full."""
    with common.proxy(cfg, work, job_id="94") as px:
        h = _bearer(px)
        s = requests.Session()
        t0, done = time.monotonic(), 0
        while done < n and time.monotonic() - t0 < seconds:
            r = s.get(f"{px.url}/api/v1/jobs/{done:08d}{'x' * 8000}", headers=h, timeout=30)
            if r.status_code != 404:
                raise RuntimeError(f"unexpected status {r.status_code}")
            done += 1
        audit = px.workdir / "audit.jsonl"
    lines = audit.read_bytes().splitlines()
    recs = [json.loads(x) for x in lines]
    first = next(len(raw) + 1 for raw, r in zip(lines, recs, strict=True)
                 if r["event"] == "request" and r["status"] == 404)
    spent = sum(len(raw) + 1 for raw, r in zip(lines, recs, strict=True)
                if r["event"] in ("request", "repeated") and r.get("status", 404) == 404)
    per = spent / max(1, done)
    return {"bench": "9. audit bytes / own 404, 8 KB path", "requests": done,
            "baseline_record_bytes": first, "subject_bytes_per_request": round(per, 2),
            "ratio": round(per / first, 4), "target": "<= 200 bytes amortised",
            "ok": per <= 200}


def peak_rss(cfg: Path, work: Path, body_bytes: int, parallel: int) -> dict[str, Any]:
    body = (b'{"program_id": "no-such-program", "params": {"blob": "'
            + b"x" * body_bytes + b'"}}')

    async def post(url: str, h: dict[str, str], k: int) -> list[int]:
        timeout = aiohttp.ClientTimeout(total=600)
        conn = aiohttp.TCPConnector(limit=parallel)
        async with aiohttp.ClientSession(timeout=timeout, connector=conn) as s:
            async def one() -> int:
                async with s.post(url, data=body,
                                  headers={**h, "Content-Type": "application/json"}) as r:
                    await r.read()
                    return r.status
            return list(await asyncio.gather(*(one() for _ in range(k))))

    figures = {}
    for label, k in (("baseline", 1), ("subject", parallel)):
        with common.proxy(cfg, work, job_id=f"92{k}", lanes=1) as px:
            h = _bearer(px)
            requests.get(px.url + "/api/v1/jobs", headers=h, timeout=30)
            statuses = asyncio.run(post(px.url + "/api/v1/jobs", h, k))
            if not all(400 <= s < 500 for s in statuses):
                raise RuntimeError(f"unexpected statuses {sorted(set(statuses))}")
            figures[label] = common.status_kb(px.proc.pid, "VmHWM") / 1024
    sub = figures["subject"]
    return {"bench": f"9. peak RSS, {parallel} x {body_bytes / 2**20:.0f} MiB POSTs",
            "baseline_peak_mb": round(figures["baseline"], 1), "subject_peak_mb": round(sub, 1),
            "ratio": round(sub / figures["baseline"], 3), "target": "<= 256 MB",
            "ok": sub <= 256}


def victim_p99(cfg: Path, work: Path, rounds: int, n: int, conns: int,
               seconds: float, where: str = "") -> dict[str, Any]:
    with TARGETS[where](cfg, work, job_id="93") as px:
        h = _bearer(px)
        port = int(px.url.rsplit(":", 1)[1])
        s = requests.Session()
        url = px.url + "/api/v1/jobs"
        for _ in range(20):
            s.get(url, headers=h, timeout=10)

        def measure(sink: list[float]) -> float:
            lat = []
            for _ in range(n):
                t0 = time.perf_counter()
                if s.get(url, headers=h, timeout=10).status_code != 200:
                    raise RuntimeError("victim request failed")
                lat.append((time.perf_counter() - t0) * 1000)
            sink.extend(lat)
            return common.percentile(lat, 99)

        quiet: list[float] = []
        loud: list[float] = []
        opened = []

        def attacked() -> float:
            nb = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(port), str(conns),
                                   str(seconds)], stdout=subprocess.PIPE, text=True)
            try:
                time.sleep(1.0)  # let it open its connections
                p99 = measure(loud)
            finally:
                out, _ = nb.communicate(timeout=seconds + 30)
            opened.append(int(out.strip() or 0))
            return p99

        common.alternate(lambda: measure(quiet), attacked, rounds)
    q99, l99 = common.percentile(quiet, 99), common.percentile(loud, 99)
    return {"bench": f"9. victim p99, neighbour {conns} conns{where}",
            "baseline_p99_ms": round(q99, 2), "subject_p99_ms": round(l99, 2),
            "neighbour_connections_opened": sum(opened),
            "ratio": round(l99 / q99, 3), "target": "p99 <= 2x quiet", "ok": l99 <= 2 * q99}


def run(work: Path, quick: bool) -> list[dict[str, Any]]:
    rows = []
    with common.emulator(work, "--backends", "fake_fez", "--lanes", "1") as emu:
        cfg = common.write_config(work, emu, lanes=1, unauth_summary_seconds=5,
                                  max_request_bytes=8 << 20, inflight_bytes=24 << 20)
        for where in TARGETS:
            rows.append(audit_bytes(cfg, work, 2000 if quick else 6000, 15 if quick else 40,
                                    where))
        rows.append(own_404_bytes(cfg, work, 1000 if quick else 3000, 15 if quick else 40))
        rows.append(peak_rss(cfg, work, (8 << 20) - 4096, 100))
        for where in TARGETS:
            rows.append(victim_p99(cfg, work, 2 if quick else 4, 100 if quick else 300, 200,
                                   6 if quick else 12, where))
    return rows
