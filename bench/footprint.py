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

from bench.common import alternate, median, proxy, rss_kb, stop, wait_for_file

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
