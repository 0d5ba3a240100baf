"""Benchmarks 1 and 2: per-request latency added by the proxy, and its throughput.

Same small requests (backends list, job status) made directly to the emulator (baseline) and
through a proxy (subject), over keep-alive connections as the client library makes them.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from typing import Any

import aiohttp

from bench.common import alternate, median, percentile


async def bearer(session: aiohttp.ClientSession, root: str, apikey: str) -> str:
    async with session.post(
        f"{root}/identity/token",
        data={"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": apikey},
    ) as resp:
        resp.raise_for_status()
        return str((await resp.json())["access_token"])


class Target:
    """One endpoint (emulator or proxy) with an authenticated keep-alive session."""

    def __init__(self, root: str, apikey: str, instance: str, limit: int = 64) -> None:
        self.root, self.apikey, self.instance = root, apikey, instance
        self.limit = limit
        self.session: aiohttp.ClientSession | None = None
        self.headers: dict[str, str] = {}
        self.count = 0  # GETs answered

    async def __aenter__(self) -> Target:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.limit, force_close=False)
        )
        token = await bearer(self.session, self.root, self.apikey)
        self.headers = {"Authorization": f"Bearer {token}", "Service-CRN": self.instance}
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.session is not None
        await self.session.close()

    async def get(self, path: str) -> int:
        assert self.session is not None
        async with self.session.get(
            f"{self.root}/api/v1{path}", headers=self.headers
        ) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET {path} -> {resp.status}")
            self.count += 1
            return resp.status

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.session is not None
        async with self.session.post(
            f"{self.root}/api/v1{path}", json=body, headers=self.headers
        ) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 300:
                raise RuntimeError(f"POST {path} -> {resp.status}: {data}")
            return dict(data)


async def _latencies(target: Target, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await target.get(path)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def _throughput(target: Target, path: str, clients: int, seconds: float) -> float:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await target.get(path)
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return done / (time.perf_counter() - t0)


def run_latency(
    direct: Target, proxied: Target, paths: dict[str, tuple[str, str]], rounds: int, n: int
) -> list[dict[str, Any]]:
    """paths: label -> (direct path, proxied path)."""
    loop = asyncio.get_event_loop()
    rows = []
    for label, (dpath, ppath) in paths.items():
        loop.run_until_complete(_latencies(direct, dpath, 20))  # warm up both
        loop.run_until_complete(_latencies(proxied, ppath, 20))
        base_all: list[float] = []
        subj_all: list[float] = []

        def measure(target: Target, path: str, sink: list[float]) -> float:
            lat = loop.run_until_complete(_latencies(target, path, n))
            sink.extend(lat)
            return median(lat)

        b, s = alternate(
            functools.partial(measure, direct, dpath, base_all),
            functools.partial(measure, proxied, ppath, subj_all),
            rounds,
        )
        b50, s50 = median(b), median(s)
        rows.append({
            "bench": f"1. latency {label}",
            "baseline_p50_ms": round(b50, 3), "subject_p50_ms": round(s50, 3),
            "added_p50_ms": round(s50 - b50, 3),
            "baseline_p99_ms": round(percentile(base_all, 99), 3),
            "subject_p99_ms": round(percentile(subj_all, 99), 3),
            "added_p99_ms": round(percentile(subj_all, 99) - percentile(base_all, 99), 3),
            "ratio": round(s50 / b50, 3), "target": "added p50 <= 0.3 ms",
            "ok": (s50 - b50) <= 0.3,
        })
    return rows


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of pid so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_throughput(
    direct: Target, proxied: Target, path_direct: str, path_proxied: str,
    clients: int, seconds: float, rounds: int, pids: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Requests per second with ``clients`` concurrent clients; with ``pids`` (emulator,
    proxy) also each one's CPU time per request: unlike req/s on a shared 2-core machine
    (the load generator and the emulator share the cores), that figure does not depend on
    what else runs, and 1/it is what one core would serve."""
    loop = asyncio.get_event_loop()
    cpu: dict[str, list[float]] = {"direct": [], "proxied": []}

    def measured(t: Target, path: str, side: str, pid: int | None) -> float:
        c0 = cpu_seconds(pid) if pid else 0.0
        n0 = t.count
        rps = loop.run_until_complete(_throughput(t, path, clients, seconds))
        if pid:
            cpu[side].append((cpu_seconds(pid) - c0) / max(1, t.count - n0))
        return rps

    b, s = alternate(
        lambda: measured(direct, path_direct, "direct", pids[0] if pids else None),
        lambda: measured(proxied, path_proxied, "proxied", pids[1] if pids else None),
        rounds,
    )
    bm, sm = median(b), median(s)
    rows: list[dict[str, Any]] = [{
        "bench": f"2. throughput, {clients} clients",
        "baseline_rps": round(bm), "subject_rps": round(sm), "ratio": round(sm / bm, 3),
        "target": "proxy >= 5000 req/s", "ok": sm >= 5000,
    }]
    if pids:
        e_us, p_us = median(cpu["direct"]) * 1e6, median(cpu["proxied"]) * 1e6
        rows.append({
            "bench": "2. CPU per request",
            "emulator_us": round(e_us), "proxy_us": round(p_us),
            "proxy_one_core_rps": round(1e6 / p_us), "ratio": round(p_us / e_us, 3),
            "target": "proxy one core >= 5000 req/s", "ok": 1e6 / p_us >= 5000,
        })
    return rows
