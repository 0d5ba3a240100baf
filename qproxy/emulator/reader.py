"""A read-only look at an emulator with the centre's key (standard library only).

For the tests and benchmarks that must see the device side the way an operator would: which
jobs ran, when they executed, whether any is still active after a job ended. Not a client for
users; they go through their job's proxy."""

from __future__ import annotations

import calendar
import json
import re
import time
import urllib.parse
import urllib.request
from typing import Any


def iso_time(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def peak_concurrency(spans: list[tuple[float, float]]) -> int:
    """The most (start, end) intervals open at one instant (an end at the very instant of
    another's start counts as closed first: a lane handed over is not two at once)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


def parse_time(iso: str) -> float:
    """The emulator's ``...Z`` timestamps (fractional seconds optional) as epoch seconds."""
    m = re.fullmatch(r"(\d+-\d+-\d+T\d+:\d+:\d+)(\.\d+)?Z", iso)
    if not m:
        raise ValueError(f"not an emulator timestamp: {iso!r}")
    base = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    return base + float(m.group(2) or 0)


class EmulatorReader:
    def __init__(self, url: str, api_key: str, timeout: float = 60) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout
        body = urllib.parse.urlencode({
            "grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": api_key}).encode()
        with urllib.request.urlopen(f"{self.url}/identity/token", body, timeout=timeout) as r:
            self.token = json.load(r)["access_token"]

    def get(self, path: str) -> Any:
        req = urllib.request.Request(f"{self.url}/api/v1{path}", headers={
            "Authorization": f"Bearer {self.token}", "Service-CRN": "reader"})
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            return json.load(r)

    def health(self) -> dict[str, Any]:
        """``GET /health`` (outside the API, no token): ``{"status": "ok", "lanes": N,
        "lanes_warm": M}``."""
        with urllib.request.urlopen(f"{self.url}/health", timeout=self.timeout) as r:
            return dict(json.load(r))

    def wait_warm(self, timeout: float, interval: float = 0.25) -> bool:
        """Poll /health until every lane's worker has built its noise model: True, or False
        after ``timeout`` seconds (an unreachable emulator is retried until then). An
        emulator that does not report warm-up (no ``lanes`` field) counts as warm."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                doc = self.health()
                if int(doc.get("lanes_warm", 0)) >= int(doc.get("lanes", 0)):
                    return True
            except (OSError, ValueError):
                pass
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))

    def jobs_since(self, t0: float, *, backend: str | None = None,
                   pending: bool | None = None) -> list[dict[str, Any]]:
        q = {"created_after": iso_time(t0), "limit": "1000"}
        if backend:
            q["backend"] = backend
        if pending is not None:
            q["pending"] = "true" if pending else "false"
        return list(self.get(f"/jobs?{urllib.parse.urlencode(q)}")["jobs"])

    def spans(self, t0: float, t1: float, backend: str | None = None,
              ) -> list[tuple[float, float, list[str]]]:
        """(start, end, tags) of each job's execution (running -> finished), clipped to
        [t0, t1]: what the device spent executing in that window."""
        out = []
        for job in self.jobs_since(t0 - 1, backend=backend):
            ts = self.get(f"/jobs/{job['id']}/metrics")["timestamps"]
            if ts.get("running") and ts.get("finished"):
                a, b = parse_time(ts["running"]), parse_time(ts["finished"])
                if min(b, t1) > max(a, t0):
                    out.append((max(a, t0), min(b, t1), list(job.get("tags") or [])))
        return sorted(out)

    def activity(self, t0: float, backend: str | None = None) -> list[dict[str, Any]]:
        """Every job created since ``t0``, from the device's own records: ``id``, ``status``,
        ``tags`` and epoch ``created`` / ``running`` / ``finished`` (None until reached).
        created -> finished is when the job held a lane's worth of the device (queued or
        running), running -> finished when it executed."""
        out = []
        for job in self.jobs_since(t0 - 1, backend=backend):
            ts = self.get(f"/jobs/{job['id']}/metrics")["timestamps"]
            out.append({"id": job["id"], "status": job.get("status"),
                        "tags": list(job.get("tags") or []),
                        **{k: parse_time(ts[k]) if ts.get(k) else None
                           for k in ("created", "running", "finished")}})
        return out
