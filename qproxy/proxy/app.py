"""aiohttp app factory: the route table and the cross-cutting middlewares; ``serve_guarded``
serves an app on its socket behind its connection guard (the job's port, the relay listener).

Middlewares, outermost first: conn (tells the connection guard, connlimit.py, when a request
is in progress, and closes a connection after keepalive_requests), audit (one HMAC-chained
record per authenticated request, whatever happens; unauthenticated ones only counted, see
policy/unauth.py), errors (policy refusals and any failure become the Runtime API error shape
— never a traceback), auth (everything but the IAM exchange needs this job's token or JWT;
authenticated work that could not be audited is refused with 503, never done unaudited).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from qproxy.node.audit import AuditUnavailable, bound
from qproxy.proxy.connlimit import ConnGuard
from qproxy.proxy.context import CTX, GUARD, JobContext, peer_uid_of
from qproxy.proxy.policy.audited import refuse_unaudited
from qproxy.proxy.policy.errors import PolicyError
from qproxy.proxy.relay.auth import RELAY_HEADER
from qproxy.proxy.routes import iam
from qproxy.proxy.routes import runtime as rt
from qproxy.proxy.routes.errors import TRACE, error_response
from qproxy.runtime_api import API_PREFIXES, IAM_TOKEN_PATH
from qproxy.upstream.base import UpstreamError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("qproxy.proxy.serve")

JOB_SUB = "{what:results|logs|metrics|transpiled_circuits|interim_results}"

# (method, path relative to the API prefix, handler)
RUNTIME_ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/backends", rt.list_backends),
    ("GET", "/backends/{name}/{what:configuration|properties|status|defaults}", rt.backend_doc),
    ("GET", "/jobs", rt.list_jobs),
    ("POST", "/jobs", rt.create_job),
    ("GET", "/jobs/{id}", rt.get_job),
    ("DELETE", "/jobs/{id}", rt.job_passthrough),
    ("GET", "/jobs/{id}/" + JOB_SUB, rt.job_passthrough),
    ("POST", "/jobs/{id}/cancel", rt.cancel_job),
    ("PUT", "/jobs/{id}/tags", rt.job_tags),
    ("POST", "/sessions", rt.create_session),
    ("GET", "/sessions/{id}", rt.get_session),
    ("PATCH", "/sessions/{id}", rt.update_session),
    ("DELETE", "/sessions/{id}/close", rt.close_session),
    ("GET", "/instances/usage", rt.usage),
    ("GET", "/workloads", rt.workloads),
]


@web.middleware
async def conn_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    guard = request.app.get(GUARD)
    conn = guard.of(request.transport) if guard is not None else None
    if conn is None:
        return await handler(request)
    keep = conn.started()
    try:
        resp = await handler(request)
        if not keep or request.get("close"):
            resp.force_close()
        return resp
    finally:
        conn.finished()


def _write_audit(ctx: JobContext, event: str, **fields: Any) -> None:
    """An audit record; a full or failing log is logged once, never an error for the job
    (authenticated work is refused up front while the log cannot take records: auth_mw)."""
    try:
        ctx.audit.record(event, **fields)
    except AuditUnavailable as exc:
        if ctx.audit.lost <= 1:
            log.warning("job %s: audit record not written: %s", ctx.job_id, exc)


def flush_unauthenticated(ctx: JobContext) -> None:
    summary = ctx.unauth.take_summary()
    if summary is not None:
        _write_audit(ctx, "unauthenticated", **summary)


@web.middleware
async def audit_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx: JobContext = request.app[CTX]
    start = time.monotonic()
    status = 500
    resp: web.StreamResponse | None = None
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except asyncio.CancelledError:
        status = 499  # the job hung up
        raise
    except ConnectionResetError:
        status = 499
        raise
    finally:
        ctx.metrics.request(status, bool(request.get("authenticated")))
        if not request.get("authenticated"):
            # anyone on the node can send these: counted, summarised, never one record each
            ctx.unauth.count(status, request.method, request.path, peer_uid_of(request))
            if ctx.unauth.due():
                flush_unauthenticated(ctx)
        else:
            _audit_request(ctx, request, resp, status, start)


def _audit_request(ctx: JobContext, request: web.Request, resp: web.StreamResponse | None,
                   status: int, start: float) -> None:
    bytes_in = int(request.get("bytes_in", request.content_length or 0))
    if "bytes_out" in request:
        bytes_out = int(request["bytes_out"])
    elif isinstance(resp, web.Response) and isinstance(resp.body, bytes):
        bytes_out = len(resp.body)
    else:
        bytes_out = 0
    ctx.stats["requests"] += 1
    ctx.stats["bytes_in"] += bytes_in
    ctx.stats["bytes_out"] += bytes_out
    extra: dict[str, Any] = request.get("audit", {})
    trace = resp.get(TRACE) if resp is not None else None
    if trace is not None:
        extra = {**extra, "trace": trace}
        log.info("job %s: %s %s -> %d (trace %s)", ctx.job_id, request.method[:16],
                 request.path[:200], status, trace)
    fields = {**bound(extra), "method": request.method[:16], "path": bound(request.path)}
    if len(request.path) > 256:
        fields["path_len"] = len(request.path)
    _write_audit(ctx, "request", status=status, bytes_in=bytes_in, bytes_out=bytes_out,
                 latency_ms=round((time.monotonic() - start) * 1000, 1), **fields)


@web.middleware
async def error_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except PolicyError as exc:
        request.setdefault("audit", {})["refused"] = exc.message
        return error_response(exc.status, exc.message, exc.code)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = "unknown route" if exc.status == 404 else exc.reason
        return error_response(exc.status,
                              f"{reason}: {request.method[:16]} {bound(request.path, 200)}")
    except UpstreamError as exc:
        return error_response(502, str(exc))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:  # noqa: BLE001 - never a traceback to the job
        log.exception("internal error on %s %s", request.method[:16], request.path[:200])
        return error_response(500, "internal proxy error")


@web.middleware
async def auth_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    if RELAY_HEADER in request.headers:  # only the relay listener takes relayed requests
        raise PolicyError(401, f"{RELAY_HEADER} is not accepted on this listener")
    ctx = request.app[CTX]
    if request.path == IAM_TOKEN_PATH:
        # judged by its token first, then by this uid's bucket (routes/iam.py); marked
        # authenticated there once the key is ok
        return await handler(request)
    reason = ctx.auth.check_header(request.headers.get("Authorization"))
    if reason is not None:
        if not ctx.unauth.allow(peer_uid_of(request)):
            raise PolicyError(429, iam.TOO_MANY)
        raise PolicyError(401, reason)
    request["authenticated"] = True
    refuse_unaudited(ctx.audit)
    return await handler(request)


def create_app(ctx: JobContext, relay_auth: Middleware | None = None) -> web.Application:
    """``relay_auth``: the primary's relay listener (qproxy.proxy.relay.listen), whose auth
    replaces the job token's and which serves no IAM exchange."""
    app = web.Application(
        middlewares=[conn_mw, audit_mw, error_mw, relay_auth or auth_mw],
        client_max_size=ctx.config.proxy.max_request_bytes,
    )
    app[CTX] = ctx
    if relay_auth is None:
        app.router.add_route("POST", IAM_TOKEN_PATH, iam.token)
    for prefix in API_PREFIXES:
        for method, path, handler in RUNTIME_ROUTES:
            app.router.add_route(method, prefix + path, handler)
    return app


async def serve_guarded(app: web.Application, sock: socket.socket, job_uid: int | None, *,
                        by_uid: bool = True) -> tuple[web.AppRunner, asyncio.Server]:
    """Serve ``app`` on ``sock`` behind its own connection guard (connlimit: timeouts, caps;
    ``by_uid=False`` for the relay listener, whose peers are on other nodes); the job's port
    and the primary's relay listener alike. The caller closes both at shutdown."""
    px = app[CTX].config.proxy
    # read_bufsize: what aiohttp buffers of a body nobody reads yet (a submission waiting for
    # its lane). Measured with 100 parallel 1.9 MB POSTs: +84 MB peak RSS at the default
    # 64 KiB, +25 MB at 16 KiB (the rest is asyncio's 256 KiB reads).
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0,
                           keepalive_timeout=px.keepalive_timeout_seconds, read_bufsize=2**14)
    await runner.setup()
    assert runner.server is not None
    guard = ConnGuard(runner.server, px, job_uid, by_uid=by_uid)
    app[GUARD] = guard
    server = await asyncio.get_running_loop().create_server(guard, sock=sock, backlog=128)
    return runner, server
