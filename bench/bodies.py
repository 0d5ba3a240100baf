"""Benchmark 4: large bodies through the proxy.

A ~20 MB job submission (the proxy must read it to apply policies) and a ~100 MB result (the
proxy must stream it): time through the proxy vs directly, and the proxy's peak RSS growth
while relaying the result. Uses the emulator's diagnostic ``qproxy-blob`` program so the
bodies travel the real jobs/results paths without minutes of simulation.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.common import alternate, median, status_kb
from bench.requests_bench import Target

SUBMIT_MB = 20
RESULT_MB = 100


async def _submit(t: Target, backend: str, padding: str, result_bytes: int) -> tuple[float, str]:
    t0 = time.perf_counter()
    job = await t.post_json("/jobs", {
        "program_id": "qproxy-blob", "backend": backend,
        "params": {"result_bytes": result_bytes, "padding": padding},
    })
    return time.perf_counter() - t0, str(job["id"])


async def _wait_done(t: Target, jid: str) -> None:
    assert t.session is not None
    for _ in range(600):
        async with t.session.get(f"{t.root}/api/v1/jobs/{jid}", headers=t.headers) as r:
            doc = await r.json()
        if doc.get("status") in ("Completed", "Failed", "Cancelled"):
            if doc["status"] != "Completed":
                raise RuntimeError(f"job {jid} ended {doc['status']}")
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(jid)


async def _fetch(t: Target, jid: str) -> tuple[float, int]:
    assert t.session is not None
    t0 = time.perf_counter()
    n = 0
    async with t.session.get(f"{t.root}/api/v1/jobs/{jid}/results", headers=t.headers) as r:
        r.raise_for_status()
        async for chunk in r.content.iter_chunked(1 << 16):
            n += len(chunk)
    return time.perf_counter() - t0, n


def run(direct: Target, proxied: Target, proxy_pid: int, rounds: int) -> list[dict[str, Any]]:
    loop = asyncio.get_event_loop()
    padding = "x" * (SUBMIT_MB * 1024 * 1024)

    def submit(t: Target, backend: str) -> float:
        secs, _ = loop.run_until_complete(_submit(t, backend, padding, 0))
        return secs

    b, s = alternate(lambda: submit(direct, "fake_fez"), lambda: submit(proxied, "ibm_fez"),
                     rounds)
    rows: list[dict[str, Any]] = [{
        "bench": f"4. {SUBMIT_MB} MB job submission",
        "baseline_s": round(median(b), 3), "subject_s": round(median(s), 3),
        "ratio": round(median(s) / median(b), 3), "target": "ratio <= 1.2",
        "ok": median(s) / median(b) <= 1.2,
    }]

    # One 100 MB result job per side; fetch it repeatedly, alternating.
    size = RESULT_MB * 1024 * 1024
    _, jd = loop.run_until_complete(_submit(direct, "fake_fez", "", size))
    _, jp = loop.run_until_complete(_submit(proxied, "ibm_fez", "", size))
    loop.run_until_complete(_wait_done(direct, jd))
    loop.run_until_complete(_wait_done(proxied, jp))
    # Reset the proxy's peak-RSS mark (VmHWM) so the submissions above don't count here.
    with open(f"/proc/{proxy_pid}/clear_refs", "w") as fh:
        fh.write("5")
    rss_before = status_kb(proxy_pid, "VmRSS")
    peaks = []

    def fetch(t: Target, jid: str, watch: bool) -> float:
        secs, n = loop.run_until_complete(_fetch(t, jid))
        if n < size:
            raise RuntimeError(f"short result: {n} < {size}")
        if watch:
            peaks.append(status_kb(proxy_pid, "VmHWM"))
        return secs

    b, s = alternate(lambda: fetch(direct, jd, False), lambda: fetch(proxied, jp, True), rounds)
    growth_mb = (max(peaks) - rss_before) / 1024
    rows.append({
        "bench": f"4. {RESULT_MB} MB result",
        "baseline_s": round(median(b), 3), "subject_s": round(median(s), 3),
        "ratio": round(median(s) / median(b), 3),
        "proxy_rss_growth_mb": round(growth_mb, 1),
        "target": "RSS growth <= 20 MB", "ok": growth_mb <= 20,
    })
    return rows
