"""The neighbour controls: ONE set, used by every listener a proxy opens -- the job's port
(``qproxy serve``), a relay's job-facing port (``qproxy serve --relay-to``) and the primary's
relay listener (``relay/listen.py``) -- so that they cannot drift apart (issue 24: the relay
had none of them).

- the connection guard (``connlimit.py``: per-uid caps, header and keep-alive timeouts,
  keepalive_requests), served by :func:`serve_guarded`;
- unauthenticated requests counted per peer uid, summarised in one audit record per window,
  429 once the uid's bucket is empty (``policy/unauth.py``; :func:`refuse_unauthenticated`);
- one keyed, capped audit record per authenticated request (``node/audit.py``), counted
  against its user's share of the node's audit space (``node/auditbudget.py``); a run of
  error records of one shape (status, method, route) is its first record and a count;
- authenticated work that cannot be audited refused with 503 in the API's error shape
  (``policy/audited.py``), never a 500 or a traceback.

A process gives its app a :class:`Controls` (``app[CONTROLS]``) and the middlewares
``conn_mw`` (outermost) and ``audit_mw``; its auth middleware marks a request
``request["authenticated"] = True`` and calls :func:`authenticated`, or raises through
:func:`refuse_unauthenticated`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from qproxy.config import ProxySettings
from qproxy.node.audit import AuditLog, AuditUnavailable, bound
from qproxy.proxy.connlimit import ConnGuard
from qproxy.proxy.policy.audited import refuse_unaudited
from qproxy.proxy.policy.errors import PolicyError
from qproxy.proxy.policy.unauth import UnauthGate
from qproxy.proxy.routes.errors import TRACE

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("qproxy.proxy.serve")
TOO_MANY = "too many unauthenticated requests to this QPU proxy"


@dataclass
class Controls:
    """What the neighbour controls of one process share (all its listeners)."""

    job_id: str
    settings: ProxySettings
    audit: AuditLog
    unauth: UnauthGate
    stats: dict[str, Any] = field(
        default_factory=lambda: {"requests": 0, "bytes_in": 0, "bytes_out": 0})
    # a request's status and whether it was authenticated (the proxy's metrics)
    on_request: Callable[[int, bool], None] | None = None

    @classmethod
    def of(cls, job_id: str, settings: ProxySettings, audit: AuditLog,
           **kw: Any) -> Controls:
        return cls(job_id, settings, audit,
                   UnauthGate(settings.unauth_rate, settings.unauth_burst,
                              settings.unauth_summary_seconds), **kw)


CONTROLS: web.AppKey[Controls] = web.AppKey("qproxy_controls", Controls)
# The connection guard of a listener (absent in in-process tests without one).
GUARD: web.AppKey[ConnGuard] = web.AppKey("qproxy_guard", ConnGuard)


def peer_uid_of(request: web.Request) -> int | None:
    """The uid at the other end of the request's connection, as its connection guard asked
    the kernel when it was accepted (None: no guard, not loopback, or unknown)."""
    guard = request.app.get(GUARD)
    conn = guard.of(request.transport) if guard is not None else None
    return conn.uid if conn is not None else None


def refuse_unauthenticated(request: web.Request, reason: str, status: int = 401) -> None:
    """Raise the refusal of a request without this job's credentials: 429 once its uid's
    bucket is empty, else ``status`` with ``reason``."""
    if not request.app[CONTROLS].unauth.allow(peer_uid_of(request)):
        raise PolicyError(429, TOO_MANY)
    raise PolicyError(status, reason)


def authenticated(request: web.Request) -> None:
    """The request carries this job's credentials: it gets one audit record, and is refused
    (503) when that record cannot be written."""
    request["authenticated"] = True
    refuse_unaudited(request.app[CONTROLS].audit)


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


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def error_shape(request: web.Request, status: int) -> str | None:
    """What makes error records "the same" for the audit log's run summary: status, method
    and matched route, never the path or ids (a job sending 404s with ever new long paths
    wrote ~1.9 KB each); None for a success, which always gets its own record."""
    if status < 400:
        return None
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "-"
    method = request.method if request.method in METHODS else "other"
    return f"{status} {method} {route}"


def write_audit(c: Controls, event: str, **fields: Any) -> None:
    """An audit record; a full or failing log is logged once, never an error for the job
    (authenticated work is refused up front while the log cannot take records)."""
    try:
        c.audit.record(event, **fields)
    except AuditUnavailable as exc:
        if c.audit.lost <= 1:
            log.warning("job %s: audit record not written: %s", c.job_id, exc)


def flush_unauthenticated(c: Controls) -> None:
    summary = c.unauth.take_summary()
    if summary is not None:
        write_audit(c, "unauthenticated", **summary)


@web.middleware
async def audit_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    c = request.app[CONTROLS]
    start = time.monotonic()
    status = 500
    resp: web.StreamResponse | None = None
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except (asyncio.CancelledError, ConnectionResetError):
        status = 499  # the client hung up
        raise
    finally:
        if c.on_request is not None:
            c.on_request(status, bool(request.get("authenticated")))
        if not request.get("authenticated"):
            # anyone can send these: counted, summarised, never one record each
            c.unauth.count(status, request.method, request.path, peer_uid_of(request))
            if c.unauth.due():
                flush_unauthenticated(c)
        else:
            _audit_request(c, request, resp, status, start)


def _audit_request(c: Controls, request: web.Request, resp: web.StreamResponse | None,
                   status: int, start: float) -> None:
    bytes_in = int(request.get("bytes_in", request.content_length or 0))
    if "bytes_out" in request:
        bytes_out = int(request["bytes_out"])
    elif isinstance(resp, web.Response) and isinstance(resp.body, bytes):
        bytes_out = len(resp.body)
    else:
        bytes_out = 0
    c.stats["requests"] += 1
    c.stats["bytes_in"] += bytes_in
    c.stats["bytes_out"] += bytes_out
    extra: dict[str, Any] = request.get("audit", {})
    trace = resp.get(TRACE) if resp is not None else None
    if trace is not None:
        extra = {**extra, "trace": trace}
        log.info("job %s: %s %s -> %d (trace %s)", c.job_id, request.method[:16],
                 request.path[:200], status, trace)
    fields = {**bound(extra), "method": request.method[:16], "path": bound(request.path)}
    if len(request.path) > 256:
        fields["path_len"] = len(request.path)
    write_audit(c, "request", repeat=error_shape(request, status), status=status,
                bytes_in=bytes_in, bytes_out=bytes_out,
                latency_ms=round((time.monotonic() - start) * 1000, 1), **fields)


async def serve_guarded(app: web.Application, sock: socket.socket, job_uid: int | None, *,
                        by_uid: bool = True) -> tuple[web.AppRunner, asyncio.Server]:
    """Serve ``app`` on ``sock`` behind its own connection guard (connlimit: timeouts, caps;
    ``by_uid=False`` for the relay listener, whose peers are on other nodes): the job's port,
    a relay's port and the primary's relay listener alike. The caller closes both at
    shutdown."""
    px = app[CONTROLS].settings
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
