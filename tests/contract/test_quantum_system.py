"""What only the ``ibm-quantum-system`` kind does (qproxy/upstream/quantum_system.py), against
the emulator's Quantum System API and a real S3 server: a refused submission waits as Queued
and lands once, lanes are given back by ``release``, ``purge`` leaves nothing, a lost answer
is looked up rather than sent twice, and a wrongly signed URL is refused by S3."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from qproxy.upstream import connect
from qproxy.upstream.base import Upstream, UpstreamError
from qproxy.upstream.quantum_system import QuantumSystemUpstream, key
from tests.contract.conftest import BACKEND, LANES, Servers
from tests.contract.test_contract import submission, wait_final
from tests.support.emulator import LONG_JOB_BACKEND, long_sampler_params

KIND = "ibm-quantum-system"


@pytest.fixture
async def qs(servers: Servers) -> AsyncIterator[QuantumSystemUpstream]:
    client = connect(servers.settings(KIND), servers.credentials())
    assert isinstance(client, QuantumSystemUpstream)
    try:
        yield client
    finally:
        await client.close()


async def system_jobs(up: Upstream) -> list[dict[str, Any]]:
    """The system's own records (``GET /v1/jobs``), as an admin sees them."""
    assert isinstance(up, QuantumSystemUpstream)
    status, doc, _ = await up.http.call("t", "GET", "/v1/jobs")
    assert status == 200
    return list(doc["jobs"])


async def reserve(servers: Servers, locked: bool) -> None:
    async with aiohttp.ClientSession() as s, s.put(
        f"{servers.emu.url}/admin/backends/{BACKEND}/reservation", json={"locked": locked},
        headers={"Authorization": f"apikey {servers.emu.api_key}"}) as r:
        assert r.status == 200, await r.text()


async def until(check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_busy_lanes_queue_in_the_proxy_and_release_frees_them(
        qs: QuantumSystemUpstream) -> None:
    """Lanes + 1 long jobs: the last is Queued with the reason (the system never holds more
    than its lanes); once one is cancelled, booked and released, it lands, exactly once."""
    long = dict(params=long_sampler_params(), backend=LONG_JOB_BACKEND)
    ids = []
    for _ in range(LANES + 1):
        r = await qs.submit(submission(**long))
        assert r.status == 200, r.raw
        ids.append(r.doc["id"])
    waiting = (await qs.get_job(ids[-1], {"exclude_params": "true"})).doc
    assert waiting["status"] == "Queued" and "lane" in waiting["state"]["reason"]
    held = [j for j in await system_jobs(qs) if j["id"] in ids]
    assert len(held) == LANES and ids[-1] not in {j["id"] for j in held}
    assert (await qs.cancel_job(ids[0])).status == 204
    await wait_final(qs, ids[0])
    await qs.release(ids[0])  # the proxy books first, then releases

    async def landed() -> bool:
        return (await qs.get_job(ids[-1], {"exclude_params": "true"})).doc["status"] != "Queued"

    await until(landed)
    seen = [j["id"] for j in await system_jobs(qs) if j["id"] in ids]
    assert sorted(seen) == sorted(ids[1:])  # one upstream job per submission
    for job_id in ids:
        await qs.cancel_job(job_id)
        await qs.purge(job_id)


async def test_a_reserved_system_queues_until_the_reservation_ends(
        qs: QuantumSystemUpstream, servers: Servers) -> None:
    await reserve(servers, True)
    try:
        r = await qs.submit(submission())
        assert r.status == 200
        doc = (await qs.get_job(r.doc["id"], {"exclude_params": "true"})).doc
        assert doc["status"] == "Queued" and "reserved" in doc["state"]["reason"]
        assert (await qs.device_status(BACKEND)).locked
    finally:
        await reserve(servers, False)
    assert (await wait_final(qs, r.doc["id"]))["status"] == "Completed"
    await qs.purge(r.doc["id"])


async def test_cancel_while_queued_never_reaches_the_system(
        qs: QuantumSystemUpstream, servers: Servers) -> None:
    await reserve(servers, True)
    try:
        r = await qs.submit(submission())
        job_id = r.doc["id"]
        assert (await qs.cancel_job(job_id)).status == 204
        assert (await wait_final(qs, job_id))["status"] == "Cancelled"
    finally:
        await reserve(servers, False)
    await asyncio.sleep(1.0)  # > the retry's longest wait (0.5 s): it would have tried
    assert job_id not in {j["id"] for j in await system_jobs(qs)}
    await qs.purge(job_id)
    assert not [k for k in servers.s3.keys() if job_id in k]


async def test_purge_leaves_nothing(qs: QuantumSystemUpstream, servers: Servers) -> None:
    r = await qs.submit(submission())
    job_id = r.doc["id"]
    await wait_final(qs, job_id)
    assert sorted(k for k in servers.s3.keys() if job_id in k) == [
        key(k, job_id) for k in ("input", "logs", "results")]
    await qs.purge(job_id)
    assert not [k for k in servers.s3.keys() if job_id in k]
    assert job_id not in {j["id"] for j in await system_jobs(qs)}


async def test_purge_from_another_process_stops_and_deletes(servers: Servers) -> None:
    """The epilog's cleanup has no records: it finds the job upstream, stops it, deletes it
    and its objects."""
    proxy = connect(servers.settings(KIND), servers.credentials())
    epilog = connect(servers.settings(KIND), servers.credentials())
    try:
        r = await proxy.submit(submission(long_sampler_params(), backend=LONG_JOB_BACKEND))
        job_id = r.doc["id"]
        assert (await epilog.get_job(job_id, {})).doc["status"] == "Running"
        await epilog.cancel_job(job_id)
        await epilog.purge(job_id)
        assert job_id not in {j["id"] for j in await system_jobs(epilog)}
        assert not [k for k in servers.s3.keys() if job_id in k]
    finally:
        await proxy.close()
        await epilog.close()


async def test_a_lost_answer_is_looked_up_not_sent_twice(servers: Servers) -> None:
    """The first POST lands but its answer is lost (the connection drops): the retry asks
    for the job before posting again, and the system holds exactly one."""
    posts: list[str] = []

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length")}
        async with aiohttp.ClientSession() as s, s.request(
                request.method, servers.emu.url + request.rel_url.raw_path_qs, data=body,
                headers=headers) as r:
            data = await r.read()
        if request.method == "POST" and request.path == "/v1/jobs":
            posts.append(json.loads(body)["id"])
            if len(posts) == 1:  # landed upstream; the answer never arrives
                assert request.transport is not None
                request.transport.close()
                raise ConnectionResetError
        return web.Response(status=r.status, body=data,
                            content_type=r.content_type if data else None)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    settings = servers.settings(KIND)
    from dataclasses import replace

    up = connect(replace(settings, url=f"http://127.0.0.1:{port}"), servers.credentials())
    try:
        r = await up.submit(submission())
        assert r.status == 200, r.raw
        job_id = r.doc["id"]
        assert (await wait_final(up, job_id))["status"] == "Completed"
        assert posts == [job_id]  # never posted again
        assert [j["id"] for j in await system_jobs(up) if j["id"] == job_id] == [job_id]
        await up.purge(job_id)
    finally:
        await up.close()
        await runner.cleanup()


async def test_a_wrong_s3_key_is_refused_by_s3(servers: Servers) -> None:
    """A signing error cannot pass unnoticed: SeaweedFS checks SigV4 signatures (moto
    would not), and the refusal names no secret."""
    up = connect(servers.settings(KIND), servers.credentials(s3key="not-the-secret"))
    try:
        with pytest.raises(UpstreamError) as err:
            await up.submit(submission())
        assert "403" in str(err.value)
        for secret in servers.secrets():
            assert secret not in str(err.value)
    finally:
        await up.close()


def test_doctor_compares_slurm_lanes_with_the_systems(servers: Servers, tmp_path: Path) -> None:
    """``qproxy doctor``: more Slurm lanes than the system gives HPC work is reported."""
    from qproxy import config as cfg
    from qproxy.admin.doctor import check_lanes
    from tests.contract.test_proxy_quantum_system import upstream_table
    from tests.proxy.conftest import write_config

    conf = write_config(servers.emu, tmp_path, resources={"ibm_onprem": (BACKEND, LANES + 1)},
                        upstream=upstream_table(servers), secrets=s3_secrets(servers))
    [(ok, line)] = check_lanes(cfg.load(conf))
    assert not ok and f"lanes = {LANES + 1}" in line and f"HPC work {LANES}" in line
    conf = write_config(servers.emu, tmp_path, resources={"ibm_onprem": (BACKEND, LANES)},
                        upstream=upstream_table(servers), secrets=s3_secrets(servers))
    assert check_lanes(cfg.load(conf)) == [
        (True, f"resource ibm_onprem: {LANES} of the device's {LANES} HPC lanes")]


def s3_secrets(servers: Servers) -> dict[str, str]:
    return {"s3id": servers.s3.access_key_id, "s3key": servers.s3.secret_access_key}
