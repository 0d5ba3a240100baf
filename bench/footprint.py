"""Benchmark 5: an idle proxy's memory and its start-to-ready time.

Baseline: the smallest useful aiohttp server (one route, no config, no crypto) started the
same way — that is the floor any aiohttp-based proxy pays, so the ratio shows what is ours.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import alternate, median, percentile, proxy, rss_kb, stop, wait_for_file

HELLO = r"""
import sys
from aiohttp import web
async def ok(request):
    return web.Response(text="ok")
app = web.Application()
app.router.add_get("/", ok)
import asyncio
async def main():
    runner = web.AppRunner(app); await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0); await site.start()
    port = site._server.sockets[0].getsockname()[1]
    open(sys.argv[1] + ".tmp", "w").write(str(port))
    import os; os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    await asyncio.Event().wait()
asyncio.run(main())
"""


def _hello(workdir: Path) -> tuple[float, int]:
    ready = Path(tempfile.mktemp(dir=workdir))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", HELLO, str(ready)])
    try:
        wait_for_file(ready, 30, proc)
        elapsed = time.perf_counter() - t0
        time.sleep(0.3)
        return elapsed, rss_kb(proc.pid)
    finally:
        stop(proc)


def _first_response(url: str) -> None:
    """Block until the server answers an HTTP request (any status counts)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url + "/api/v1/backends", timeout=30).read()
    except urllib.error.HTTPError:
        pass  # 401 without a token: the app is serving


def _proxy(cfg: Path, workdir: Path, served: list[float]) -> tuple[float, int]:
    t0 = time.perf_counter()
    with proxy(cfg, workdir, job_id="fp") as p:
        # The env file is written once the socket accepts connections; the app finishes
        # loading just after. Also report when the first request is actually answered.
        _first_response(p.url)
        served.append(time.perf_counter() - t0)
        time.sleep(0.3)
        return p.ready_seconds, rss_kb(p.proc.pid)


def run(cfg: Path, workdir: Path, rounds: int = 5) -> list[dict[str, Any]]:
    base_rss: list[int] = []
    subj_rss: list[int] = []

    def base() -> float:
        t, r = _hello(workdir)
        base_rss.append(r)
        return t

    served: list[float] = []

    def subj() -> float:
        t, r = _proxy(cfg, workdir, served)
        subj_rss.append(r)
        return t

    b, s = alternate(base, subj, rounds)
    b_mb = median([float(x) for x in base_rss]) / 1024
    s_mb = median([float(x) for x in subj_rss]) / 1024
    return [
        {
            "bench": "5. idle proxy RSS",
            "baseline_mb": round(b_mb, 1), "subject_mb": round(s_mb, 1),
            "ratio": round(s_mb / b_mb, 3), "target": "<= 40 MB", "ok": s_mb <= 40,
        },
        {
            "bench": "5. start to ready (env file)",
            "baseline_ms": round(median(b) * 1000, 1), "subject_ms": round(median(s) * 1000, 1),
            "ratio": round(median(s) / median(b), 3), "target": "<= 300 ms",
            "ok": median(s) <= 0.3,
        },
        {
            "bench": "5. start to first response",
            "baseline_ms": round(median(b) * 1000, 1),
            "subject_ms": round(median(served) * 1000, 1),
            "ratio": round(median(served) / median(b), 3), "target": "<= 300 ms",
            "ok": median(served) <= 0.3,
        },
    ]


# --------------------------------------------------------------- 64 proxies on one node
def memory_kb(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, USS) in kB from /proc/PID/smaps_rollup: USS (private pages) is what one
    more process adds to the node; PSS shares each shared page out among its users."""
    got: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            words = line.split()
            if len(words) == 3 and words[2] == "kB":
                got[words[0].rstrip(":")] = int(words[1])
    return got["Rss"], got["Pss"], got["Private_Clean"] + got["Private_Dirty"]


def _served(env_file: Path, timeout: float = 30) -> str:
    """Wait for the env file, then for the first answered request; returns the URL."""
    deadline = time.monotonic() + timeout
    while not env_file.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(env_file)
        time.sleep(0.0005)
    url = next(line.split("=", 1)[1] for line in env_file.read_text().splitlines()
               if line.startswith("IAM_URL="))
    _first_response(url)
    return url


def _work(url: str, token: str) -> None:
    """What a job's first client call does: the IAM exchange, then one upstream request."""
    import json as _json
    import urllib.parse
    import urllib.request

    body = urllib.parse.urlencode({"grant_type": "urn:ibm:params:oauth:grant-type:apikey",
                                   "apikey": token}).encode()
    with urllib.request.urlopen(url + "/identity/token", body, timeout=30) as r:
        bearer = _json.loads(r.read())["access_token"]
    req = urllib.request.Request(url + "/experimental/api/v1/backends",
                                 headers={"Authorization": f"Bearer {bearer}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()


def _hello_memory(workdir: Path) -> tuple[int, int, int]:
    ready = Path(tempfile.mktemp(dir=workdir))
    proc = subprocess.Popen([sys.executable, "-c", HELLO, str(ready)])
    try:
        wait_for_file(ready, 30, proc)
        time.sleep(0.3)
        return memory_kb(proc.pid)
    finally:
        stop(proc)


def _standalone_memory(cfg: Path, workdir: Path) -> tuple[int, int, int]:
    with proxy(cfg, workdir, job_id="alone") as p:
        _first_response(p.url)
        _work(p.url, p.token)
        time.sleep(0.3)
        return memory_kb(p.proc.pid)


def run_node(cfg: Path, workdir: Path, jobs: int = 64) -> list[dict[str, Any]]:
    """``jobs`` QPU jobs' proxies alive at once, forked by the node's spare as the prolog
    claims them (qproxy.proxy.spare, qproxy.slurm.spares), each having served its job's
    first calls. Baselines: one bare aiohttp process, and one proxy started as its own process."""
    import os
    import signal
    import statistics

    from qproxy.node.sparepool import listing
    from qproxy.slurm import spares

    hello = _hello_memory(workdir)
    alone = _standalone_memory(cfg, workdir)
    state = workdir / "state"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    spares.ensure(state, cfg, 1, env)
    deadline = time.monotonic() + 60
    while not [s for s in listing(state) if s[0].name.endswith(".sock")]:
        if time.monotonic() > deadline:
            raise TimeoutError("no spare became ready")
        time.sleep(0.01)
    zygote = listing(state)[0][1]
    children: list[int] = []
    to_served: list[float] = []
    try:
        urls = []
        for i in range(jobs):
            d = Path(tempfile.mkdtemp(prefix=f"node{i}-", dir=workdir))
            argv = ["--config", str(cfg), "--job-id", f"n{i}", "--user", "bench",
                    "--backend", "ibm_fez", "--lanes", "1",
                    "--end-time", str(int(time.time()) + 3600), "--env-file", str(d / "env"),
                    "--audit-log", str(d / "audit.jsonl"), "--ledger-file",
                    str(d / "ledger.jsonl"), "--summary-file", str(d / "summary.json")]
            t0 = time.perf_counter()
            claimed = spares.claim(state, argv, d / "proxy.log")
            if claimed is None:
                raise RuntimeError("the spare did not take a job")
            children.append(claimed.pid)
            url = _served(d / "env")
            to_served.append(time.perf_counter() - t0)
            token = next(line.split("=", 1)[1] for line in (d / "env").read_text().splitlines()
                         if line.startswith("QISKIT_IBM_TOKEN="))
            urls.append((url, token))
        for url, token in urls:
            _work(url, token)
        time.sleep(1.0)
        mem = [memory_kb(pid) for pid in children]
        z = memory_kb(zygote)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        spares.stop_all(state)

    def med(i: int) -> float:
        return statistics.median(m[i] for m in mem) / 1024

    uss, pss, rss = med(2), med(1), med(0)
    total_pss = (z[1] + sum(m[1] for m in mem)) / 1024
    served_ms = median(to_served) * 1000
    return [
        {
            "bench": f"5. {jobs} proxies: USS per job",
            "bare_aiohttp_uss_mb": round(hello[2] / 1024, 1),
            "own_process_uss_mb": round(alone[2] / 1024, 1),
            "subject_uss_mb": round(uss, 1), "subject_pss_mb": round(pss, 1),
            "subject_rss_mb": round(rss, 1), "spare_uss_mb": round(z[2] / 1024, 1),
            "total_pss_mb": round(total_pss, 1),
            "own_processes_total_pss_mb": round(jobs * alone[1] / 1024, 1),
            "ratio": round(uss / (alone[2] / 1024), 3), "target": "<= 8 MB USS",
            "ok": uss <= 8,
        },
        {
            "bench": "5. prolog claim to serving proxy",
            "subject_ms": round(served_ms, 1),
            "p90_ms": round(percentile(to_served, 90) * 1000, 1),
            "target": "<= 100 ms", "ok": served_ms <= 100,
        },
    ]
