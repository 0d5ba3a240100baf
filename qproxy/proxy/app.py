"""aiohttp app factory: the route table and the cross-cutting middlewares; ``serve_guarded``
(qproxy.proxy.neighbours) serves an app on its socket behind its connection guard (the job's
port, the relay listener, a relay's port).

Middlewares, outermost first: conn and audit, the neighbour controls every listener shares
(qproxy.proxy.neighbours: the connection guard's request bookkeeping; one HMAC-chained record
per authenticated request, whatever happens; unauthenticated ones only counted, see
policy/unauth.py), errors (policy refusals and any failure become the Runtime API error shape
— never a traceback), auth (everything but the IAM exchange needs this job's token or JWT;
authenticated work that could not be audited is refused with 503, never done unaudited).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Middleware

from qproxy.node.audit import bound
from qproxy.proxy.context import CTX, JobContext
from qproxy.proxy.neighbours import (
    CONTROLS,
    Handler,
    audit_mw,
    authenticated,
    conn_mw,
    flush_unauthenticated,
    refuse_unauthenticated,
    serve_guarded,
)
from qproxy.proxy.policy.errors import PolicyError
from qproxy.proxy.relay.auth import RELAY_HEADER
from qproxy.proxy.routes import iam
from qproxy.proxy.routes import runtime as rt
from qproxy.proxy.routes.errors import error_response
from qproxy.runtime_api import API_PREFIXES, IAM_TOKEN_PATH
from qproxy.upstream.base import UpstreamError

log = logging.getLogger("qproxy.proxy.serve")

JOB_SUB = "{what:results|logs|metrics|transpiled_circuits|interim_results}"

# (method, path relative to the API prefix, handler)
RUNTIME_ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/backends", rt.list_backends),
    ("GET", "/backends/{name}/{what:configuration|properties|status|defaults}", rt.backend_doc),
    ("GET", "/jobs", rt.list_jobs),
    ("POST", "/jobs", rt.create_job),
    ("GET", "/jobs/{id}", rt.get_job),
    ("DELETE", "/jobs/{id}", rt.delete_job),
    ("GET", "/jobs/{id}/" + JOB_SUB, rt.job_content),
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
        refuse_unauthenticated(request, f"{RELAY_HEADER} is not accepted on this listener")
    ctx = request.app[CTX]
    if request.path == IAM_TOKEN_PATH:
        # judged by its token first, then by this uid's bucket (routes/iam.py); marked
        # authenticated there once the key is ok
        return await handler(request)
    reason = ctx.auth.check_header(request.headers.get("Authorization"))
    if reason is not None:
        refuse_unauthenticated(request, reason)
    authenticated(request)
    return await handler(request)


def create_app(ctx: JobContext, relay_auth: Middleware | None = None) -> web.Application:
    """``relay_auth``: the primary's relay listener (qproxy.proxy.relay.listen), whose auth
    replaces the job token's and which serves no IAM exchange."""
    app = web.Application(
        middlewares=[conn_mw, audit_mw, error_mw, relay_auth or auth_mw],
        client_max_size=ctx.config.proxy.max_request_bytes,
    )
    app[CTX] = ctx
    app[CONTROLS] = ctx.controls
    if relay_auth is None:
        app.router.add_route("POST", IAM_TOKEN_PATH, iam.token)
    for prefix in API_PREFIXES:
        for method, path, handler in RUNTIME_ROUTES:
            app.router.add_route(method, prefix + path, handler)
    return app


__all__ = ["Handler", "audit_mw", "conn_mw", "create_app", "flush_unauthenticated",
           "serve_guarded"]
