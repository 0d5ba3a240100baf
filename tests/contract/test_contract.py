"""The upstream seam's contract (qproxy/upstream/base.py), run against every kind's real
server: the emulator's Runtime API for ``ibm-runtime``, its Quantum System API and a real S3
server for ``ibm-quantum-system``. Whatever a vendor's wire protocol, each operation answers
in the Runtime API's terms: a new kind is done when this file passes for it."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from qproxy.runtime_api import is_final, job_status
from qproxy.upstream import jsonx
from qproxy.upstream.base import Reply, Submission, Upstream
from qproxy.upstream.booking import stop_and_book
from tests.contract.conftest import BACKEND, LANES, Servers
from tests.support.emulator import LONG_JOB_BACKEND, long_sampler_params

DEADLINE = 600.0


def bell(shots: int = 400) -> dict[str, Any]:
    from qiskit import QuantumCircuit
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_ibm_runtime import RuntimeEncoder
    from qiskit_ibm_runtime.fake_provider import FakeManilaV2

    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    pm = generate_preset_pass_manager(optimization_level=1, backend=FakeManilaV2(),
                                      seed_transpiler=1)
    doc = {"pubs": [(pm.run(qc), None, shots)], "version": 2, "support_qiskit": True,
           "options": {}}
    return dict(json.loads(json.dumps(doc, cls=RuntimeEncoder)))


def submission(params: dict[str, Any] | None = None, backend: str = BACKEND,
               **fields: Any) -> Submission:
    """As the proxy hands it over: params kept as the bytes the job sent."""
    raw = jsonx.Raw(json.dumps(params if params is not None else bell()).encode())
    return Submission({"program_id": "sampler", "backend": backend, "params": raw,
                       "cost": 300, **fields}, deadline=time.time() + DEADLINE)


def is_runtime_error(r: Reply, status: int) -> None:
    """The Runtime API's error shape (what qiskit-ibm-runtime's RequestsApiError reads)."""
    assert r.status == status, (r.status, r.raw[:300])
    doc = json.loads(r.raw)
    assert isinstance(doc["errors"][0]["message"], str) and doc["errors"][0]["message"]
    assert "code" in doc["errors"][0] and "trace" in doc


async def wait_final(up: Upstream, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = await up.get_job(job_id, {"exclude_params": "true"})
        assert r.status == 200, r.raw[:300]
        if is_final(job_status(r.doc)):
            return dict(r.doc)
        assert time.monotonic() < deadline, f"job {job_id} not final: {r.doc}"
        await asyncio.sleep(0.1)


async def read(up: Upstream, job_id: str, what: str) -> tuple[int, bytes]:
    async with up.job_content(job_id, what, {}) as content:
        return content.status, b"".join([c async for c in content.chunks])


async def test_token(upstream: Upstream) -> None:
    first = await upstream.token()
    assert first and first == await upstream.token()
    assert await upstream.token(force=True)


async def test_backends_and_their_documents(upstream: Upstream) -> None:
    r = await upstream.list_backends({})
    assert r.status == 200
    devices = {d["name"]: d for d in r.doc["devices"]}
    assert devices[BACKEND]["qubits"] == 5  # fake_manila_v2
    conf = await upstream.backend_doc(BACKEND, "configuration", {})
    assert conf.status == 200 and conf.doc["n_qubits"] == 5
    props = await upstream.backend_doc(BACKEND, "properties", {})
    assert props.status == 200 and props.doc["qubits"]
    status = await upstream.backend_doc(BACKEND, "status", {})
    assert status.status == 200 and status.doc["state"] is True
    is_runtime_error(await upstream.backend_doc("no_such_device", "configuration", {}), 404)


async def test_device_status_and_capacity(upstream: Upstream) -> None:
    st = await upstream.device_status(BACKEND)
    assert st.online and not st.locked and st.status == "active"
    cap = await upstream.capacity(BACKEND)
    # the cloud API reports no lanes; an on-prem system its HPC share
    assert cap.hpc_lanes == (LANES if upstream.kind == "ibm-quantum-system" else None)


async def test_a_job_from_submission_to_results(upstream: Upstream) -> None:
    from qiskit_ibm_runtime import RuntimeDecoder

    r = await upstream.submit(submission(tags=["mine"]))
    assert r.status == 200, r.raw
    job_id = r.doc["id"]
    doc = await wait_final(upstream, job_id)
    assert job_status(doc) == "Completed" and doc["backend"] == BACKEND
    assert doc["program"]["id"] == "sampler" and doc["tags"] == ["mine"]
    status, body = await read(upstream, job_id, "results")
    assert status == 200
    result = json.loads(body, cls=RuntimeDecoder)
    counts = result[0].data.meas.get_counts()
    assert sum(counts.values()) == 400 and set(counts) >= {"00", "11"}
    status, logs = await read(upstream, job_id, "logs")
    assert status == 200 and isinstance(logs, bytes)
    m = await upstream.job_metrics(job_id)
    assert m.status == 200 and m.doc["usage"]["quantum_seconds"] > 0
    with_params = await upstream.get_job(job_id, {})
    assert json.loads(with_params.raw)["params"]["pubs"]  # the params as sent
    tagged = await upstream.job_tags(job_id, ["mine", "other"])
    assert tagged.status == 204
    assert (await upstream.get_job(job_id, {"exclude_params": "true"})).doc["tags"] == [
        "mine", "other"]
    cancelled, seconds = await stop_and_book(upstream, job_id)
    assert not cancelled and seconds is not None and seconds > 0
    await upstream.release(job_id)
    # released: still described, its results still readable
    assert job_status((await upstream.get_job(job_id, {"exclude_params": "true"})).doc) == \
        "Completed"
    assert (await read(upstream, job_id, "results"))[0] == 200
    await upstream.purge(job_id)


async def test_refusals_have_the_runtime_shape(upstream: Upstream) -> None:
    is_runtime_error(await upstream.get_job("no-such-job", {}), 404)
    r = await upstream.submit(submission(program_id="no_such_program"))
    assert r.status in (400, 404)
    is_runtime_error(r, r.status)
    is_runtime_error(await upstream.get_session("no-such-session"), 404)


async def test_cancel(upstream: Upstream) -> None:
    r = await upstream.submit(submission(long_sampler_params(), backend=LONG_JOB_BACKEND))
    assert r.status == 200, r.raw
    job_id = r.doc["id"]
    assert (await upstream.cancel_job(job_id)).status == 204
    assert job_status(await wait_final(upstream, job_id, 30)) == "Cancelled"
    is_runtime_error(await upstream.cancel_job(job_id), 409)
    await upstream.purge(job_id)


async def test_sessions(upstream: Upstream) -> None:
    r = await upstream.create_session({"backend": BACKEND, "mode": "batch", "max_ttl": 600})
    assert r.status == 200, r.raw
    sid = r.doc["id"]
    got = await upstream.get_session(sid)
    assert got.status == 200 and got.doc["mode"] == "batch" and got.doc["accepting_jobs"]
    job = await upstream.submit(submission(session_id=sid))
    assert job.status == 200, job.raw
    doc = await wait_final(upstream, job.doc["id"])
    assert doc["session_id"] == sid and job_status(doc) == "Completed"
    assert (await upstream.update_session(sid, {"accepting_jobs": False})).status == 204
    refused = await upstream.submit(submission(session_id=sid))
    assert refused.status >= 400
    assert (await upstream.close_session(sid)).status == 204
    assert (await upstream.get_session(sid)).doc["state"] == "closed"
    await upstream.purge(job.doc["id"])


async def test_calls_are_observed_by_operation(upstream: Upstream) -> None:
    """The metrics' labels: operation names, never an id."""
    seen = upstream.observe  # conftest's Observed (imported twice by pytest: no isinstance)
    assert seen is not None and hasattr(seen, "calls")
    r = await upstream.submit(submission())
    job_id = r.doc["id"]
    await wait_final(upstream, job_id)
    await upstream.purge(job_id)
    ops = {op for op, _ in seen.calls}
    assert "submit" in ops and "get_job" in ops
    assert all(job_id not in op and len(op) <= 40 for op in ops)
    assert all(s is None or s >= 0 for _, s in seen.calls)


async def test_nothing_secret_reaches_an_answer(upstream: Upstream, servers: Servers) -> None:
    """Every answer a job could see, of a whole job's life: no key, no presigned URL."""
    answers: list[bytes] = []
    r = await upstream.submit(submission())
    answers.append(r.raw)
    job_id = r.doc["id"]
    await wait_final(upstream, job_id)
    for reply in (await upstream.get_job(job_id, {}), await upstream.job_metrics(job_id),
                  await upstream.list_backends({}), await upstream.cancel_job(job_id),
                  await upstream.get_job("missing", {})):
        answers.append(reply.raw)
    answers += [(await read(upstream, job_id, w))[1] for w in ("results", "logs")]
    await upstream.purge(job_id)
    blob = b"\n".join(answers).decode(errors="replace")
    for secret in (*servers.secrets(), await upstream.token()):  # the upstream token too
        assert secret not in blob
