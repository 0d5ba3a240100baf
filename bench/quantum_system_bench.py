"""Benchmark 11: the Quantum System kind (issue 25). The same work through a job's proxy (the
Runtime API; the proxy stores the params in S3, presigns, posts, polls and streams the
results back from S3) and directly against the system as QRMI's client does it (params to
S3, presigned URLs in the POST, poll, results from S3, DELETE), with the same S3 server and
the same polling interval on both sides:

- a sampler job end to end (submit to result read), target ratio <= 1.1;
- a 20 MB submission (until the system has taken it), target ratio <= 1.2;
- a 100 MB result read, with the proxy's peak RSS growth (bounded: it is streamed).

The direct side uses the product's own S3 signing and IAM code (qproxy/upstream/s3.py and
transport.py): the baseline is the protocol, not a different HTTP stack.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.common import alternate, median, status_kb
from bench.requests_bench import Target
from qproxy.upstream.s3 import ObjectStore
from qproxy.upstream.transport import Transport

POLL = 0.05
SUBMIT_MB = 20
RESULT_MB = 100
FINAL = ("Completed", "Failed", "Cancelled")


class Direct:
    """The Quantum System API as its own clients use it."""

    def __init__(self, url: str, key: str, instance: str, store: ObjectStore) -> None:
        self.api = Transport(url, url, key, True, {"Service-CRN": instance})
        self.store = store

    async def submit(self, backend: str, program: str, params: bytes) -> str:
        job_id = str(uuid.uuid4())
        await self.store.put(f"input_{job_id}.json", params)
        storage = {kind: {"type": "s3_compatible", "presigned_url": self.store.presign(
            "GET" if kind == "input" else "PUT", f"{kind}_{job_id}.json", 3600)}
            for kind in ("input", "results", "logs")}
        status, doc, _ = await self.api.call("submit", "POST", "/v1/jobs", body={
            "id": job_id, "backend": backend, "program_id": program, "log_level": "warning",
            "timeout_secs": 600, "storage": storage})
        if status != 204:
            raise RuntimeError(f"POST /v1/jobs -> {status}: {doc}")
        return job_id

    async def wait(self, job_id: str) -> None:
        while True:
            _, doc, _ = await self.api.call("get_job", "GET", f"/v1/jobs/{job_id}")
            if doc["status"] in FINAL:
                if doc["status"] != "Completed":
                    raise RuntimeError(f"job {job_id} ended {doc['status']}")
                return
            await asyncio.sleep(POLL)

    async def result(self, job_id: str) -> int:
        n = 0
        async with self.store.get(f"results_{job_id}.json") as (status, _, chunks):
            if status != 200:
                raise RuntimeError(f"results of {job_id}: HTTP {status}")
            async for chunk in chunks:
                n += len(chunk)
        return n

    async def delete(self, job_id: str) -> None:
        await self.api.call("delete_job", "DELETE", f"/v1/jobs/{job_id}")
        for kind in ("input", "results", "logs"):
            await self.store.delete(f"{kind}_{job_id}.json")

    async def close(self) -> None:
        await self.api.close()
        await self.store.close()


async def _proxied_submit(t: Target, body: dict[str, Any] | bytes) -> str:
    """POST /jobs; a body given as bytes is sent as it is (encoded before the clock starts,
    as the direct side's params are: both sides time the transfer, not the encoding)."""
    if isinstance(body, dict):
        return str((await t.post_json("/jobs", body))["id"])
    assert t.session is not None
    async with t.session.post(f"{t.root}/api/v1/jobs", data=body, headers={
            **t.headers, "Content-Type": "application/json"}) as r:
        doc = await r.json(content_type=None)
        if r.status >= 300:
            raise RuntimeError(f"POST /jobs -> {r.status}: {doc}")
        return str(doc["id"])


async def _proxied_wait(t: Target, job_id: str) -> None:
    assert t.session is not None
    while True:
        # as qiskit-ibm-runtime polls (job_get's default): the status without the params
        async with t.session.get(f"{t.root}/api/v1/jobs/{job_id}?exclude_params=true",
                                 headers=t.headers) as r:
            doc = await r.json()
        if doc["status"] in FINAL:
            if doc["status"] != "Completed":
                raise RuntimeError(f"job {job_id} ended {doc['status']}: {doc}")
            return
        await asyncio.sleep(POLL)


async def _proxied_result(t: Target, job_id: str) -> int:
    assert t.session is not None
    n = 0
    async with t.session.get(f"{t.root}/api/v1/jobs/{job_id}/results",
                             headers=t.headers) as r:
        r.raise_for_status()
        async for chunk in r.content.iter_chunked(1 << 16):
            n += len(chunk)
    return n


async def _proxied_delete(t: Target, job_id: str) -> None:
    assert t.session is not None
    async with t.session.delete(f"{t.root}/api/v1/jobs/{job_id}", headers=t.headers) as r:
        await r.read()


def run(direct: Direct, proxied: Target, proxy_pid: int, params: dict[str, Any],
        backend: str, resource: str, rounds: int) -> list[dict[str, Any]]:
    loop = asyncio.get_event_loop()
    sampler = orjson.dumps(params)

    async def d_sampler() -> float:
        t0 = time.perf_counter()
        job_id = await direct.submit(backend, "sampler", sampler)
        await direct.wait(job_id)
        await direct.result(job_id)
        secs = time.perf_counter() - t0
        await direct.delete(job_id)
        return secs

    sampler_body = orjson.dumps({"program_id": "sampler", "backend": resource,
                                 "params": params})

    async def p_sampler() -> float:
        t0 = time.perf_counter()
        job_id = await _proxied_submit(proxied, sampler_body)
        await _proxied_wait(proxied, job_id)
        await _proxied_result(proxied, job_id)
        secs = time.perf_counter() - t0
        await _proxied_delete(proxied, job_id)
        return secs

    b, s = alternate(lambda: loop.run_until_complete(d_sampler()),
                     lambda: loop.run_until_complete(p_sampler()), rounds)
    rows: list[dict[str, Any]] = [{
        "bench": "11. sampler end to end, Quantum System kind",
        "baseline_s": round(median(b), 3), "subject_s": round(median(s), 3),
        "ratio": round(median(s) / median(b), 3), "target": "ratio <= 1.1",
        "ok": median(s) / median(b) <= 1.1}]

    padding = "x" * (SUBMIT_MB * 1024 * 1024)
    blob = {"result_bytes": 0, "padding": padding}
    blob_raw = orjson.dumps(blob)
    done: list[tuple[str, str]] = []

    async def d_submit() -> float:
        t0 = time.perf_counter()
        job_id = await direct.submit(backend, "qproxy-blob", blob_raw)
        done.append(("d", job_id))
        return time.perf_counter() - t0

    blob_body = orjson.dumps({"program_id": "qproxy-blob", "backend": resource,
                              "params": blob})

    async def p_submit() -> float:
        t0 = time.perf_counter()
        job_id = await _proxied_submit(proxied, blob_body)
        done.append(("p", job_id))
        return time.perf_counter() - t0

    async def settle() -> None:  # each side's lanes free again before the next round
        for side, job_id in done:
            if side == "d":
                await direct.wait(job_id)
                await direct.delete(job_id)
            else:
                await _proxied_wait(proxied, job_id)
                await _proxied_delete(proxied, job_id)
        done.clear()

    def timed(f: Any) -> float:
        secs = float(loop.run_until_complete(f()))
        loop.run_until_complete(settle())
        return secs

    b, s = alternate(lambda: timed(d_submit), lambda: timed(p_submit), rounds)
    rows.append({
        "bench": f"11. {SUBMIT_MB} MB submission, Quantum System kind",
        "baseline_s": round(median(b), 3), "subject_s": round(median(s), 3),
        "ratio": round(median(s) / median(b), 3), "target": "ratio <= 1.2",
        "ok": median(s) / median(b) <= 1.2})

    size = RESULT_MB * 1024 * 1024
    big = {"result_bytes": size, "padding": ""}
    jd = loop.run_until_complete(direct.submit(backend, "qproxy-blob", orjson.dumps(big)))
    jp = loop.run_until_complete(_proxied_submit(
        proxied, {"program_id": "qproxy-blob", "backend": resource, "params": big}))
    loop.run_until_complete(direct.wait(jd))
    loop.run_until_complete(_proxied_wait(proxied, jp))
    with open(f"/proc/{proxy_pid}/clear_refs", "w") as fh:
        fh.write("5")  # the peak-RSS mark starts here
    rss_before = status_kb(proxy_pid, "VmRSS")
    peaks: list[int] = []

    def fetch_direct() -> float:
        t0 = time.perf_counter()
        if loop.run_until_complete(direct.result(jd)) < size:
            raise RuntimeError("short result")
        return time.perf_counter() - t0

    def fetch_proxied() -> float:
        t0 = time.perf_counter()
        if loop.run_until_complete(_proxied_result(proxied, jp)) < size:
            raise RuntimeError("short result")
        secs = time.perf_counter() - t0
        peaks.append(status_kb(proxy_pid, "VmHWM"))
        return secs

    b, s = alternate(fetch_direct, fetch_proxied, rounds)
    growth = (max(peaks) - rss_before) / 1024
    rows.append({
        "bench": f"11. {RESULT_MB} MB result, Quantum System kind",
        "baseline_s": round(median(b), 3), "subject_s": round(median(s), 3),
        "ratio": round(median(s) / median(b), 3), "proxy_rss_growth_mb": round(growth, 1),
        "target": "RSS growth <= 20 MB", "ok": growth <= 20})
    loop.run_until_complete(direct.delete(jd))
    loop.run_until_complete(_proxied_delete(proxied, jp))
    return rows


def write_config(workdir: Path, emu: Any, s3: Any, lanes: int = 2) -> Path:
    """A proxy config whose ibm_fez is on the emulator's Quantum System API."""
    secrets_file = workdir / "secrets-qs.toml"
    secrets_file.write_text(f'[secrets]\nemulator = "{emu.api_key}"\n'
                            f's3id = "{s3.access_key_id}"\ns3key = "{s3.secret_access_key}"\n')
    secrets_file.chmod(0o600)
    cfg = workdir / "qproxy-qs.toml"
    cfg.write_text(f"""[paths]
state_dir = "{workdir}/state"
audit_dir = "{workdir}/audit"
secrets_file = "{secrets_file}"
secrets_key_file = "{workdir}/secrets.key"

[upstreams.system]
kind = "ibm-quantum-system"
url = "{emu.url}"
iam_url = "{emu.url}"
instance = "{emu.instance}"
api_key_secret = "emulator"
s3_endpoint = "{s3.endpoint}"
s3_bucket = "{s3.bucket}"
s3_access_key_secret = "s3id"
s3_secret_key_secret = "s3key"

[resources.ibm_fez]
upstream = "system"
backend = "fake_fez"
lanes = {lanes}
""")
    return cfg
