"""Runtime API routes the client uses, each applying the job's policies.

Bodies a policy must read or rewrite (job/session creation and updates, tags, backend
documents, job documents) are read whole, within ``max_request_bytes`` and the in-flight
budget (policy/inflight.py); everything else (results, logs, metrics) is streamed chunk by
chunk in both directions. Every wait for a body chunk is bounded by
``client_body_timeout_seconds`` (408). Query parameters reach upstream only where a route
allows them (``QUERY``): ``?instance=crn:other`` on ``/instances/usage`` does not.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from qproxy.proxy import envelope
from qproxy.proxy.context import CTX, JobContext
from qproxy.proxy.policy import tags as tag_policy
from qproxy.proxy.policy.errors import PolicyError
from qproxy.runtime_api import API_VERSION_HEADER, is_final, job_status, parse_time
from qproxy.upstream import jsonx
from qproxy.upstream.base import Content, Reply, Submission

# Query parameters each upstream-bound route passes on (what qiskit-ibm-runtime sends);
# anything else is dropped, never forwarded under the centre's credentials.
QUERY: dict[str, frozenset[str]] = {
    "backend_doc": frozenset({"calibration_id", "updated_before"}),
    "get_job": frozenset({"exclude_params"}),
}
NO_QUERY: frozenset[str] = frozenset()


def allowed_query(request: web.Request, route: str) -> dict[str, str]:
    keep = QUERY.get(route, NO_QUERY)
    dropped = sorted(k for k in request.query if k not in keep)
    if dropped:
        note(request, query_dropped=dropped[:8])
    return {k: v for k, v in request.query.items() if k in keep}


def ctx_of(request: web.Request) -> JobContext:
    return request.app[CTX]


def note(request: web.Request, **fields: Any) -> None:
    """Add fields (policy decisions, upstream ids) to this request's audit record."""
    request.setdefault("audit", {}).update(fields)


async def next_chunk(request: web.Request, size: int = -1) -> bytes:
    """The next piece of the body, waiting at most client_body_timeout_seconds for it."""
    timeout = ctx_of(request).config.proxy.client_body_timeout_seconds
    try:
        if size < 0:
            return await asyncio.wait_for(request.content.readany(), timeout)
        return await asyncio.wait_for(request.content.read(size), timeout)
    except TimeoutError:
        raise PolicyError(408, f"request body not received within {timeout:g} s") from None


def body_budget(request: web.Request) -> Any:
    """Hold the body's size in the in-flight budget while the request is handled."""
    ctx = ctx_of(request)
    limit = ctx.config.proxy.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PolicyError(413, f"request body larger than the limit of {limit} bytes")
    size = request.content_length if request.content_length is not None else limit
    return ctx.inflight.hold(size if request.body_exists else 0)


async def read_body(request: web.Request) -> bytearray:
    """The whole body (a bytearray: both JSON parsers take it, no final 20 MB copy). Call
    inside ``body_budget``."""
    limit = ctx_of(request).config.proxy.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PolicyError(413, f"request body larger than the limit of {limit} bytes")
    buf = bytearray()
    while chunk := await next_chunk(request):
        buf += chunk
        if len(buf) > limit:
            raise PolicyError(413, f"request body larger than the limit of {limit} bytes")
    request["bytes_in"] = len(buf)
    return buf


async def read_json(request: web.Request) -> dict[str, Any]:
    """A JSON object body; remembers (in the request) whether only the stdlib could parse it."""
    raw = await read_body(request)
    try:
        parsed = jsonx.loads(raw) if raw and not raw.isspace() else jsonx.Doc({})
    except (ValueError, UnicodeDecodeError) as exc:
        raise PolicyError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(parsed.value, dict):
        raise PolicyError(400, "request body must be a JSON object")
    request["stdlib_json"] = parsed.stdlib
    return parsed.value


def json_response(status: int, doc: Any) -> web.Response:
    return web.Response(status=status, body=jsonx.dumps(doc), content_type="application/json")


def relay_small(status: int, raw: bytes) -> web.Response:
    """Pass an upstream answer (typically an error) through unchanged."""
    return web.Response(status=status, body=raw, content_type="application/json")


def relay_reply(reply: Reply) -> web.Response:
    """An answer with or without a body (204s have none), as upstream gave it."""
    return web.Response(status=reply.status, body=reply.raw or None,
                        content_type="application/json" if reply.raw else None)


async def relay_stream(request: web.Request, content: Content) -> web.StreamResponse:
    """Stream an upstream body to the job without buffering it."""
    limit = ctx_of(request).config.proxy.max_response_bytes
    if limit and content.length is not None and content.length > limit:
        raise PolicyError(502, f"upstream response larger than the limit of {limit} bytes")
    out = web.StreamResponse(status=content.status)
    if content.content_type:
        out.headers["Content-Type"] = content.content_type
    out.headers.update(content.headers)
    if content.length is not None:
        out.content_length = content.length
    await out.prepare(request)
    sent = 0
    async for chunk in content.chunks:
        sent += len(chunk)
        if limit and sent > limit:
            request["bytes_out"] = sent
            raise ConnectionResetError("response size limit exceeded")
        await out.write(chunk)
    await out.write_eof()
    request["bytes_out"] = sent
    return out


def api_version(request: web.Request) -> str | None:
    """The client's IBM-API-Version, passed on (the answer's shape may depend on it)."""
    return request.headers.get(API_VERSION_HEADER)


def shown(ctx: JobContext, doc: Any) -> Any:
    """A job document as the job sees it: the local backend name, only its own tags."""
    return tag_policy.hide(ctx.backend.rewrite_job(doc))


async def update_status(ctx: JobContext, job_id: str, doc: Any) -> None:
    status = job_status(doc)
    if status is None or job_id not in ctx.owned.jobs:
        return
    ctx.owned.jobs[job_id] = status
    if is_final(status):
        await ctx.lanes.finished(job_id)
        ctx.usage.final_seen(job_id)


# --- backends ---------------------------------------------------------------------------


async def list_backends(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    r = await ctx.client.list_backends(allowed_query(request, "backends"))
    if r.status != 200:
        return relay_small(r.status, r.raw)
    note(request, backends_visible=[ctx.backend.local])
    return json_response(200, ctx.backend.filter_devices(r.doc))


async def backend_doc(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    name = ctx.backend.to_upstream(request.match_info["name"])
    what = request.match_info["what"]
    r = await ctx.client.backend_doc(name, what, allowed_query(request, "backend_doc"))
    if r.status != 200 or r.doc is None:
        return relay_small(r.status, r.raw)
    return json_response(200, ctx.backend.rewrite_doc(r.doc))


# --- jobs -------------------------------------------------------------------------------


async def create_job(request: web.Request) -> web.StreamResponse:
    """The lane is taken BEFORE the body is read: a submission waiting for a lane holds no
    memory (its body waits in the kernel), so N lanes bound the bodies being read to N."""
    ctx = ctx_of(request)
    ctx.timelimit.check_new_work("job")
    try:
        waited = await ctx.lanes.reserve()
    except PolicyError:  # waited its bound (or refused at once) for a lane
        ctx.metrics.lane_wait.observe(ctx.lanes.wait_seconds if ctx.lanes.mode == "wait"
                                      else 0.0)
        raise
    ctx.metrics.lane_wait.observe(waited)
    try:
        async with body_budget(request):
            return await _create_job(request, ctx, waited)
    finally:
        if request.get("lane_reserved", True):  # not handed to _submit: give it back
            await ctx.lanes.cancel_reservation()


async def read_envelope(request: web.Request) -> dict[str, Any]:
    """A job submission: top-level fields parsed, params kept as sent (qproxy.proxy.envelope)."""
    raw = await read_body(request)
    if not raw or raw.isspace():
        return {}
    try:
        env = envelope.split(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PolicyError(400, f"request body is not a valid JSON object: {exc}") from None
    request["stdlib_json"] = env.stdlib
    return env.fields


async def _create_job(request: web.Request, ctx: JobContext, waited: float) -> web.StreamResponse:
    body = await read_envelope(request)
    body["backend"] = ctx.backend.to_upstream(body.get("backend", ctx.backend.local))
    sid = body.get("session_id")
    if sid is not None and sid not in ctx.owned.sessions and sid not in ctx.owned.jobs:
        raise PolicyError(404, f"session {str(sid)[:64]} not found", code=1297)
    body["tags"] = tag_policy.merge_tags(body.get("tags"), ctx.tags)
    if body.get("start_session"):
        ctx.sessions.check_new({})
    # Clamp after the lane wait: the time left is what counts at submission.
    decisions: dict[str, Any] = ctx.timelimit.rewrite_job(body)
    decisions["lane_wait_seconds"] = round(waited, 3)
    sub = Submission(body, request.get("stdlib_json", False), api_version(request),
                     ctx.timelimit.end_time)
    # Shielded: once the POST is on its way, the job id must reach the ledger even if the
    # job's connection goes away meanwhile. From here _submit owns the lane reservation.
    request["lane_reserved"] = False
    r = await asyncio.shield(asyncio.ensure_future(_submit(ctx, sub)))
    job_id = r.doc.get("id") if isinstance(r.doc, dict) else None
    if not isinstance(job_id, str) or r.status not in (200, 201):
        note(request, decisions=decisions)
        return relay_small(r.status, r.raw)
    note(request, upstream_job=job_id, upstream_session=sid, decisions=decisions)
    return json_response(r.status, shown(ctx, r.doc))


async def _submit(ctx: JobContext, sub: Submission) -> Reply:
    """Submit the job upstream and account for it (ledger, ownership, lane) — or free the
    lane."""
    try:
        r = await ctx.client.submit(sub)
    except BaseException:
        await ctx.lanes.cancel_reservation()
        raise
    body = sub.fields
    job_id = r.doc.get("id") if isinstance(r.doc, dict) else None
    if r.status not in (200, 201) or not isinstance(job_id, str):
        await ctx.lanes.cancel_reservation()
        return r
    ctx.ledger.append("job", job_id)
    ctx.metrics.upstream_jobs.inc()
    ctx.owned.add_job(job_id)
    await ctx.lanes.commit(job_id)
    if body.get("start_session"):
        ctx.ledger.append("session", job_id)
        ctx.owned.add_session(job_id)
        ctx.sessions.opened(job_id)
    return r


async def _fetch_job(ctx: JobContext, job_id: str, sem: asyncio.Semaphore) -> Any:
    async with sem:
        r = await ctx.client.get_job(job_id, {"exclude_params": "true"})
    if r.status != 200 or not isinstance(r.doc, dict):
        return None
    await update_status(ctx, job_id, r.doc)
    return shown(ctx, r.doc)


def _matches(job: dict[str, Any], q: Any) -> bool:
    status = (job_status(job) or "").lower()
    pending = q.get("pending")
    if pending == "true" and status not in ("queued", "running"):
        return False
    if pending == "false" and status in ("queued", "running"):
        return False
    if "backend" in q and job.get("backend") != q["backend"]:
        return False
    if "program" in q and job.get("program", {}).get("id", job.get("program_id")) != q["program"]:
        return False
    if "session_id" in q and job.get("session_id") != q["session_id"]:
        return False
    tags = q.getall("tags", [])
    if tags and not set(tags) <= set(job.get("tags") or []):
        return False
    created = parse_time(str(job.get("created", "")))
    for name, after in (("created_after", True), ("created_before", False)):
        if name in q:
            if (bound := parse_time(q[name])) is None:
                raise PolicyError(400, f"{name} is not an ISO 8601 time: {q[name][:40]!r}")
            if created is None or (created < bound if after else created > bound):
                return False
    return True


async def list_jobs(request: web.Request) -> web.StreamResponse:
    """Built from this job's own ids (never upstream's instance-wide list)."""
    ctx = ctx_of(request)
    sem = asyncio.Semaphore(8)
    q = request.query
    ids = list(ctx.owned.jobs)
    if q.get("pending") == "true":
        # a final state is final: only jobs not yet seen final can be pending (with 100+
        # jobs, fetching each one took long enough for a running job to finish meanwhile)
        ids = [j for j in ids if not is_final(ctx.owned.jobs[j])]
    docs = await asyncio.gather(*(_fetch_job(ctx, j, sem) for j in ids))
    jobs = [d for d in docs if d is not None and _matches(d, q)]
    jobs.sort(key=lambda d: str(d.get("created", "")), reverse=q.get("sort") != "ASC")
    try:
        offset = max(0, int(q.get("offset", 0)))
        limit = max(1, int(q.get("limit", 200)))
    except ValueError:
        raise PolicyError(400, "limit and offset must be integers") from None
    page = jobs[offset : offset + limit]
    note(request, listed=len(page))
    return json_response(200, {"jobs": page, "count": len(jobs), "limit": limit,
                               "offset": offset})


def _own_job(request: web.Request) -> str:
    job_id = request.match_info["id"]
    ctx_of(request).owned.check_job(job_id)
    note(request, upstream_job=job_id)
    return job_id


async def get_job(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    job_id = _own_job(request)
    r = await ctx.client.get_job(job_id, allowed_query(request, "get_job"))
    if r.status != 200 or not isinstance(r.doc, dict):
        return relay_small(r.status, r.raw)
    await update_status(ctx, job_id, r.doc)
    return json_response(200, shown(ctx, r.doc))


async def job_content(request: web.Request) -> web.StreamResponse:
    """Results, logs and the job's other documents, streamed both ways."""
    ctx = ctx_of(request)
    job_id = _own_job(request)
    what = request.match_info["what"]
    if what == "metrics":
        r = await ctx.client.job_metrics(job_id)
        return relay_small(r.status, r.raw)
    async with ctx.client.job_content(job_id, what, {}) as content:
        return await relay_stream(request, content)


async def delete_job(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    job_id = _own_job(request)
    # Book its usage first: once deleted upstream its metrics are gone (usage.py).
    seconds = await ctx.usage.ensure(job_id)
    if seconds is None:
        raise PolicyError(503, f"the usage of job {job_id} could not be recorded yet; "
                               "it is not deleted; retry shortly")
    note(request, decisions={"usage_booked_seconds": seconds})
    r = await ctx.client.delete_job(job_id)
    if r.ok:
        await ctx.lanes.finished(job_id)
    return relay_reply(r)


async def cancel_job(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    job_id = _own_job(request)
    r = await ctx.client.cancel_job(job_id)
    if r.status < 300:
        ctx.owned.jobs[job_id] = "Cancelled"
        await ctx.lanes.finished(job_id)
        ctx.usage.cancelled(job_id, ctx.config.proxy.status_poll_seconds)
    return relay_reply(r)


async def job_tags(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    job_id = _own_job(request)
    async with body_budget(request):
        body = await read_json(request)
    return relay_reply(await ctx.client.job_tags(job_id, tag_policy.merge_tags(body.get("tags"),
                                                                   ctx.tags)))


# --- sessions ---------------------------------------------------------------------------


async def create_session(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    async with body_budget(request):
        body = await read_json(request)
    body["backend"] = ctx.backend.to_upstream(body.get("backend", ctx.backend.local))
    body["instance"] = ctx.upstream.instance
    decisions = ctx.sessions.check_new(body)
    decisions.update(ctx.timelimit.rewrite_session(body))
    r = await ctx.client.create_session(body)
    sid = r.doc.get("id") if isinstance(r.doc, dict) else None
    if r.status not in (200, 201) or not isinstance(sid, str):
        note(request, decisions=decisions)
        return relay_small(r.status, r.raw)
    ctx.ledger.append("session", sid)
    ctx.owned.add_session(sid)
    ctx.sessions.opened(sid)
    note(request, upstream_session=sid, decisions=decisions)
    return json_response(r.status, ctx.backend.rewrite_job(r.doc))


def _own_session(request: web.Request) -> str:
    sid = request.match_info["id"]
    ctx_of(request).owned.check_session(sid)
    note(request, upstream_session=sid)
    return sid


async def get_session(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    sid = _own_session(request)
    r = await ctx.client.get_session(sid)
    if r.status != 200 or not isinstance(r.doc, dict):
        return relay_small(r.status, r.raw)
    return json_response(200, ctx.backend.rewrite_job(r.doc))


async def close_session(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    sid = _own_session(request)
    r = await ctx.client.close_session(sid)
    if r.ok:
        ctx.sessions.closed(sid)
    return relay_reply(r)


async def update_session(request: web.Request) -> web.StreamResponse:
    """``PATCH /sessions/{id}``: only allow-listed fields, ``max_ttl`` clamped."""
    ctx = ctx_of(request)
    sid = _own_session(request)
    async with body_budget(request):
        body = await read_json(request)
    ctx.sessions.check_patch(body)
    decisions: dict[str, Any] = {}
    if "max_ttl" in body:
        decisions = ctx.timelimit.rewrite_session(body)
    if body.get("accepting_jobs") is True and sid not in ctx.sessions.open:
        ctx.sessions.check_new({})
    r = await ctx.client.update_session(sid, body)
    if r.ok and "accepting_jobs" in body:
        (ctx.sessions.opened if body["accepting_jobs"] else ctx.sessions.closed)(sid)
    note(request, decisions=decisions or None)
    return relay_reply(r)


# --- instance-level ---------------------------------------------------------------------


async def usage(request: web.Request) -> web.StreamResponse:
    allowed_query(request, "usage")  # nothing of the query goes upstream (noted if sent)
    r = await ctx_of(request).client.instance_usage()
    return relay_small(r.status, r.raw)


def _workload(job: dict[str, Any]) -> dict[str, Any]:
    return {"id": job.get("id"), "type": "job",
            "mode": "session" if job.get("session_id") else "job",
            "status": job_status(job), "backend": job.get("backend"),
            "program_id": job.get("program", {}).get("id", job.get("program_id"))
            if isinstance(job.get("program"), dict) else job.get("program_id"),
            "session_id": job.get("session_id"), "tags": job.get("tags"),
            "created_at": job.get("created")}


async def workloads(request: web.Request) -> web.StreamResponse:
    """Rebuilt from this job's own upstream jobs (like ``GET /jobs``): nothing of upstream's
    instance-wide answer, not even its top-level keys, reaches the job."""
    ctx = ctx_of(request)
    sem = asyncio.Semaphore(8)
    docs = await asyncio.gather(*(_fetch_job(ctx, j, sem) for j in list(ctx.owned.jobs)))
    items = sorted((_workload(d) for d in docs if d is not None),
                   key=lambda w: str(w.get("created_at") or ""), reverse=True)
    try:
        limit = max(1, min(1000, int(request.query.get("limit", 50))))
    except ValueError:
        raise PolicyError(400, "limit must be an integer") from None
    note(request, listed=min(limit, len(items)))
    return json_response(200, {"workloads": items[:limit], "next": None, "previous": None})
