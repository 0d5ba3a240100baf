"""The app in-process against a tiny fake upstream: streaming, wire fidelity, upstream auth
refresh and failure handling — things the emulator cannot be made to show on demand."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from qproxy import config as cfg
from qproxy.proxy.app import create_app
from qproxy.proxy.context import JobContext
from qproxy.proxy.serve import build_context

CRN = "crn:v1:test::"


class FakeUpstream:
    def __init__(self) -> None:
        self.token = "up-0"
        self.exchanges = 0
        self.jobs: dict[str, bytes] = {}
        self.headers: list[dict[str, str]] = []
        self.gate = asyncio.Event()
        self.app = web.Application(middlewares=[self.auth])
        self.app.router.add_post("/identity/token", self.iam)
        self.app.router.add_post("/api/v1/jobs", self.create)
        self.app.router.add_get("/api/v1/jobs/{id}", self.get)
        self.app.router.add_get("/api/v1/jobs/{id}/results", self.results)

    @web.middleware
    async def auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/api/"):
            self.headers.append(dict(request.headers))
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                return web.json_response({"errors": [{"message": "bad token"}]}, status=401)
        return await handler(request)

    async def iam(self, request: web.Request) -> web.Response:
        form = await request.post()
        assert form["apikey"] == "vendor-secret"
        self.exchanges += 1
        self.token = f"up-{self.exchanges}"
        return web.json_response({"access_token": self.token, "expires_in": 3600})

    async def create(self, request: web.Request) -> web.Response:
        job_id = f"job{len(self.jobs)}"
        self.jobs[job_id] = await request.read()
        return web.json_response({"id": job_id, "backend": "fake_fez"})

    async def get(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"id": request.match_info["id"], "status": "Running", "backend": "fake_fez"}
        )

    async def results(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "text/plain"
        await resp.prepare(request)
        await resp.write(b"first-chunk;")
        await asyncio.wait_for(self.gate.wait(), 10)
        for _ in range(64):
            await resp.write(b"x" * 65536)
        await resp.write_eof()
        return resp


async def make_ctx(tmp_path: Path, upstream_url: str, **proxy: Any) -> JobContext:
    extra = "\n".join(f"{k} = {v!r}" for k, v in proxy.items())
    (tmp_path / "secrets.toml").write_text('[secrets]\nup = "vendor-secret"\n')
    os.chmod(tmp_path / "secrets.toml", 0o600)
    (tmp_path / "q.toml").write_text(f"""
[paths]
audit_dir = "audit"
secrets_file = "secrets.toml"
[proxy]
{extra}
[upstreams.up]
url = "{upstream_url}/api/v1"
iam_url = "{upstream_url}"
instance = "{CRN}"
api_key_secret = "up"
[resources.ibm_fez]
upstream = "up"
backend = "fake_fez"
lanes = 2
""")
    args = argparse.Namespace(
        backend="ibm_fez",
        lanes=2,
        user="u",
        account=None,
        job_id="77",
        env_file=tmp_path / "job" / "env",
        audit_log=None,
        ledger_file=None,
        end_time=time.time() + 3600,
    )
    return build_context(args, cfg.load(tmp_path / "q.toml"), "job-token")


@pytest.fixture
async def setup(tmp_path: Path) -> Any:
    fake = FakeUpstream()
    up = TestServer(fake.app)
    await up.start_server()
    ctx = await make_ctx(tmp_path, str(up.make_url("")).rstrip("/"), max_request_bytes=4096)
    client = TestClient(TestServer(create_app(ctx)))
    await client.start_server()
    yield fake, ctx, client
    await client.close()
    await ctx.client.close()
    await up.close()


H = {"Authorization": "apikey job-token"}


async def test_results_are_streamed(setup: Any) -> None:
    fake, ctx, client = setup
    r = await client.post("/api/v1/jobs", headers=H, json={"program_id": "sampler"})
    job = (await r.json())["id"]
    resp = await client.get(f"/api/v1/jobs/{job}/results", headers=H)
    assert resp.status == 200
    # The first bytes arrive while upstream is still holding the rest back.
    first = await asyncio.wait_for(resp.content.readexactly(12), 5)
    assert first == b"first-chunk;"
    fake.gate.set()
    rest = await resp.read()
    assert len(rest) == 64 * 65536
    h = fake.headers[-1]
    assert h["Service-CRN"] == CRN and "IBM-API-Version" in h
    assert "job-token" not in str(fake.headers)


async def test_opaque_json_survives(setup: Any) -> None:
    fake, ctx, client = setup
    body = b'{"program_id":"sampler","params":{"seed":1180591620717411303424,"x":NaN}}'
    r = await client.post(
        "/api/v1/jobs", headers={**H, "Content-Type": "application/json"}, data=body
    )
    assert r.status == 200
    sent = fake.jobs[(await r.json())["id"]]
    assert b"1180591620717411303424" in sent and b"NaN" in sent
    assert b'"backend":"fake_fez"' in sent and b"slurm_job:77" in sent


async def test_upstream_token_refresh_and_limits(setup: Any) -> None:
    fake, ctx, client = setup
    r = await client.post("/api/v1/jobs", headers=H, json={})
    assert r.status == 200 and fake.exchanges == 1
    fake.token = "rotated"  # upstream revoked our token: one re-exchange, then success
    r = await client.get(f"/api/v1/jobs/{(await r.json())['id']}", headers=H)
    assert r.status == 200 and fake.exchanges == 2
    assert (await r.json())["backend"] == "ibm_fez"
    r = await client.post("/api/v1/jobs", headers=H, data=b"{" + b" " * 5000 + b"}")
    assert r.status == 413 and "limit" in (await r.json())["errors"][0]["message"]


async def test_upstream_down_is_502(tmp_path: Path) -> None:
    ctx = await make_ctx(tmp_path, "http://127.0.0.1:9")
    client = TestClient(TestServer(create_app(ctx)))
    await client.start_server()
    try:
        r = await client.get("/api/v1/backends", headers=H)
        assert r.status == 502
        body = await r.json()
        assert "unreachable" in body["errors"][0]["message"] and "trace" in body
    finally:
        await client.close()
        await ctx.client.close()
