"""Runtime API handlers: backends, jobs, sessions, usage and workloads.

Shapes follow what qiskit-ibm-runtime 0.51 parses (``api/rest/*.py`` and
``qiskit_runtime_service.py``): ``{"devices": [...]}`` for the backend list, ``{"jobs": [...],
"count": N}`` for job lists, the result as a text body, 204s for tag updates and deletes.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from ..runtime_api import parse_time
from .backends import Device
from .errors import ApiError
from .jobs import FINAL_STATES, PENDING_STATES, Scheduler, Session, _new_id, now_iso
from .programs import PREPARERS, prepare

SCHEDULER = web.AppKey("scheduler", Scheduler)
INSTANCE = web.AppKey("instance", str)


def _sched(request: web.Request) -> Scheduler:
    return request.app[SCHEDULER]


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "The request body is not valid JSON.", 1400) from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", 1400)
    return body


def _parse_time(value: str, name: str) -> float:
    parsed = parse_time(value)
    if parsed is None:
        raise ApiError(400, f"Invalid {name}: {value!r}", 1400)
    return parsed


def _int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"Invalid {name}: {raw!r}", 1400) from None
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be in {lo}..{hi}.", 1400)
    return value


# --- backends ---------------------------------------------------------------------------


async def list_backends(request: web.Request) -> web.Response:
    sched = _sched(request)
    devices = [d.device_entry(sched.queue_length(d.name)) for d in sched.devices.values()]
    return web.json_response({"devices": devices})


def _calibrated_device(request: web.Request) -> Device:
    """The named device, if the ``calibration_id`` asked for (if any) is its calibration."""
    device = _sched(request).device(request.match_info["name"])
    wanted = request.query.get("calibration_id")
    if wanted is not None and wanted != device.calibration_id:
        raise ApiError(404, f"Calibration {wanted!r} not found for backend {device.name}.", 1216)
    return device


async def backend_configuration(request: web.Request) -> web.Response:
    return web.json_response(_calibrated_device(request).configuration_doc())


async def backend_properties(request: web.Request) -> web.Response:
    return web.json_response(_calibrated_device(request).properties_doc())


async def backend_status(request: web.Request) -> web.Response:
    sched = _sched(request)
    device = sched.device(request.match_info["name"])
    return web.json_response(device.status_doc(sched.queue_length(device.name)))


# --- jobs -------------------------------------------------------------------------------


async def create_job(request: web.Request) -> web.Response:
    sched = _sched(request)
    body = await _json_body(request)
    program_id = body.get("program_id")
    if not isinstance(program_id, str) or not program_id:
        raise ApiError(400, "'program_id' is required.", 1400)
    if program_id not in PREPARERS:
        raise ApiError(404, f"Program {program_id!r} not found.", 1404)
    session_id = body.get("session_id")
    backend = body.get("backend")
    if session_id:
        sess = sched.sessions.get(session_id)
        if sess is None:
            raise ApiError(404, f"Session not found: {session_id}", 1404)
        if not sess.accepting_jobs or sess.state == "closed":
            raise ApiError(400, f"Session {session_id} is closed and accepts no new jobs.", 1217)
        backend = backend or sess.backend
        if backend != sess.backend:
            raise ApiError(400, f"Session {session_id} runs on {sess.backend}, not {backend}.")
    device = sched.device(backend)
    calibration_id = body.get("calibration_id")
    if calibration_id is not None and calibration_id != device.calibration_id:
        raise ApiError(400, f"Calibration {calibration_id!r} not found for backend "
                       f"{device.name}.", 1400)
    tags = body.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ApiError(400, "'tags' must be a list of strings.", 1400)
    cost = body.get("cost")
    if cost is not None and (not isinstance(cost, int) or cost < 1):
        raise ApiError(400, "'cost' must be a positive integer (seconds).", 1400)
    if "params" not in body:
        raise ApiError(400, "'params' is required.", 1400)
    # decoding qpy and validating pubs is CPU work: keep it off the event loop
    loop = asyncio.get_running_loop()
    prepared = await loop.run_in_executor(None, prepare, program_id, device, body["params"])
    if body.get("start_session") and not session_id:
        sess = Session(_new_id(), device.name, "dedicated", int(body.get("session_time") or 28800))
        sched.sessions[sess.id] = sess
        session_id = sess.id
    job = sched.submit(
        program_id,
        device,
        body["params"],
        prepared,
        session_id=session_id,
        tags=list(tags),
        cost=cost,
        private=bool(body.get("private", False)),
        runtime=str(body.get("runtime") or ""),
    )
    return web.json_response({"id": job.id, "backend": job.backend, "session_id": job.session_id})


async def list_jobs(request: web.Request) -> web.Response:
    sched = _sched(request)
    q = request.query
    limit = _int_query(request, "limit", 200, 1, 1000)
    offset = _int_query(request, "offset", _int_query(request, "skip", 0, 0, 10**9), 0, 10**9)
    jobs = list(sched.jobs.values())
    if backend := q.get("backend"):
        jobs = [j for j in jobs if j.backend == backend]
    if program := q.get("program"):
        jobs = [j for j in jobs if j.program_id == program]
    if session_id := q.get("session_id"):
        jobs = [j for j in jobs if j.session_id == session_id]
    if (pending := q.get("pending")) is not None:
        wanted = PENDING_STATES if pending.lower() == "true" else FINAL_STATES
        jobs = [j for j in jobs if j.state in wanted]
    tags = q.getall("tags", [])
    if tags:
        jobs = [j for j in jobs if all(t in j.tags for t in tags)]
    if after := q.get("created_after"):
        ts = _parse_time(after, "created_after")
        jobs = [j for j in jobs if j.created >= ts]
    if before := q.get("created_before"):
        ts = _parse_time(before, "created_before")
        jobs = [j for j in jobs if j.created <= ts]
    descending = q.get("sort", "DESC").upper() != "ASC"
    jobs.sort(key=lambda j: j.created, reverse=descending)
    exclude = q.get("exclude_params", "false").lower() == "true"
    page = jobs[offset : offset + limit]
    return web.json_response(
        {
            "jobs": [j.to_api(exclude_params=exclude) for j in page],
            "count": len(jobs),
            "limit": limit,
            "offset": offset,
        }
    )


async def get_job(request: web.Request) -> web.Response:
    job = _sched(request).get(request.match_info["job_id"])
    exclude = request.query.get("exclude_params", "false").lower() == "true"
    return web.json_response(job.to_api(exclude_params=exclude))


async def delete_job(request: web.Request) -> web.Response:
    sched = _sched(request)
    sched.delete(sched.get(request.match_info["job_id"]))
    return web.Response(status=204)


async def job_results(request: web.Request) -> web.Response:
    job = _sched(request).get(request.match_info["job_id"])
    result = job.take_result()
    if result is None:
        if job.final:
            # like the real service: a failed job's "result" is its error text (the client
            # reads it to build RuntimeJobFailureError's message)
            return web.Response(text=job.reason or job.state, content_type="text/plain")
        raise ApiError(400, f"Job {job.id} has not finished yet ({job.state}).", 1234)
    return web.Response(text=result, content_type="text/plain")


async def cancel_job(request: web.Request) -> web.Response:
    sched = _sched(request)
    sched.cancel(sched.get(request.match_info["job_id"]))
    return web.Response(status=204)


async def job_logs(request: web.Request) -> web.Response:
    job = _sched(request).get(request.match_info["job_id"])
    return web.Response(text="\n".join(job.log_lines) + "\n", content_type="text/plain")


async def job_metrics(request: web.Request) -> web.Response:
    sched = _sched(request)
    job = sched.get(request.match_info["job_id"])
    doc = job.metrics()
    position = sched.queue_position(job)
    if position is not None:  # IBM's metrics carry it while a job waits (qrun shows it)
        doc["position_in_queue"] = position
    return web.json_response(doc)


async def job_tags(request: web.Request) -> web.Response:
    job = _sched(request).get(request.match_info["job_id"])
    body = await _json_body(request)
    tags = body.get("tags")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ApiError(400, "'tags' must be a list of strings.", 1400)
    job.tags = list(tags)
    return web.Response(status=204)


# --- sessions ---------------------------------------------------------------------------


async def create_session(request: web.Request) -> web.Response:
    sched = _sched(request)
    body = await _json_body(request)
    mode = body.get("mode", "dedicated")
    if mode not in ("dedicated", "batch"):
        raise ApiError(400, f"Invalid session mode {mode!r} (dedicated or batch).", 1400)
    device = sched.device(body.get("backend"))
    max_ttl = body.get("max_ttl") or 28800
    if not isinstance(max_ttl, int) or max_ttl < 1:
        raise ApiError(400, "'max_ttl' must be a positive integer.", 1400)
    sess = Session(_new_id(), device.name, mode, max_ttl)
    sched.sessions[sess.id] = sess
    return web.json_response({"id": sess.id, "mode": mode, "backend_name": device.name})


def _session(request: web.Request) -> Session:
    sid = request.match_info["session_id"]
    sess = _sched(request).sessions.get(sid)
    if sess is None:
        raise ApiError(404, f"Session not found: {sid}", 1404)
    return sess


async def get_session(request: web.Request) -> web.Response:
    sess = _session(request)
    return web.json_response(sess.to_api(_sched(request).jobs.values()))


async def patch_session(request: web.Request) -> web.Response:
    sess = _session(request)
    body = await _json_body(request)
    if "accepting_jobs" in body:
        if not isinstance(body["accepting_jobs"], bool):
            raise ApiError(400, "'accepting_jobs' must be a boolean.", 1400)
        if body["accepting_jobs"] and sess.state == "closed":
            raise ApiError(409, f"Session {sess.id} is closed.", 1400)
        sess.accepting_jobs = body["accepting_jobs"]
        if not sess.accepting_jobs and sess.state == "open":
            sess.state = "inactive"
    return web.Response(status=204)


async def close_session(request: web.Request) -> web.Response:
    """``DELETE /sessions/{id}/close``: close the session and cancel its unfinished jobs."""
    sched = _sched(request)
    sess = _session(request)
    sess.accepting_jobs = False
    sess.state = "closed"
    sess.closed = time.time()
    for job in list(sched.jobs.values()):
        if job.session_id == sess.id and not job.final:
            sched.cancel(job, "Session closed.")  # a running one is stopped too
    return web.Response(status=204)


# --- account ----------------------------------------------------------------------------


async def instance_usage(request: web.Request) -> web.Response:
    sched = _sched(request)
    used = sum(j.quantum_seconds() for j in sched.jobs.values())
    return web.json_response(
        {
            "instance_id": request.app[INSTANCE],
            "plan_id": "qproxy-emulator",
            "usage_consumed_seconds": round(used),
            "usage_period": {"start_time": now_iso(0), "end_time": None},
            "usage_limit_reached": False,
            "usage_limit_seconds": None,
            "usage_allocation_seconds": None,
        }
    )


async def workloads(request: web.Request) -> web.Response:
    sched = _sched(request)
    limit = _int_query(request, "limit", 50, 1, 1000)
    items = sorted(sched.jobs.values(), key=lambda j: j.created, reverse=True)
    if backend := request.query.get("backend"):
        items = [j for j in items if j.backend == backend]
    out = [
        {
            "id": j.id,
            "type": "job",
            "mode": (
                sched.sessions[j.session_id].mode
                if j.session_id and j.session_id in sched.sessions
                else "job"
            ),
            "status": j.state,
            "backend": j.backend,
            "program_id": j.program_id,
            "session_id": j.session_id,
            "tags": j.tags,
            "created_at": now_iso(j.created),
            "usage_seconds": j.quantum_seconds(),
        }
        for j in items[:limit]
    ]
    return web.json_response({"workloads": out, "next": None, "previous": None})


# (method, path relative to the API prefix, handler)
ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/backends", list_backends),
    ("GET", "/backends/{name}/configuration", backend_configuration),
    ("GET", "/backends/{name}/properties", backend_properties),
    ("GET", "/backends/{name}/status", backend_status),
    ("POST", "/jobs", create_job),
    ("GET", "/jobs", list_jobs),
    ("GET", "/jobs/{job_id}", get_job),
    ("DELETE", "/jobs/{job_id}", delete_job),
    ("GET", "/jobs/{job_id}/results", job_results),
    ("POST", "/jobs/{job_id}/cancel", cancel_job),
    ("GET", "/jobs/{job_id}/logs", job_logs),
    ("GET", "/jobs/{job_id}/metrics", job_metrics),
    ("PUT", "/jobs/{job_id}/tags", job_tags),
    ("POST", "/sessions", create_session),
    ("GET", "/sessions/{session_id}", get_session),
    ("PATCH", "/sessions/{session_id}", patch_session),
    ("DELETE", "/sessions/{session_id}/close", close_session),
    ("GET", "/instances/usage", instance_usage),
    ("GET", "/workloads", workloads),
]
