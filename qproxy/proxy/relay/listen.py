"""The primary proxy's relay listener (see ``qproxy.proxy.relay.auth``): the same app, routes,
policies, job context and neighbour controls (``qproxy.proxy.neighbours``) as the job-facing
listener, with one difference in authentication: a request must carry a relay header signed
for this job, this run, this request and this node, inside its time window, seen once (the
job token alone is refused; the IAM exchange is not served: each relay answers its own
tasks' exchanges). A refused one -- forged, replayed, late -- is counted in the
unauthenticated summary like any other (never one audit record each) and closes its
connection; past the bucket it is a 429. Audit records of relayed requests say
``via: relay`` and name the relaying node."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from qproxy.proxy.app import Handler, create_app, serve_guarded
from qproxy.proxy.context import JobContext
from qproxy.proxy.neighbours import GUARD, authenticated, refuse_unauthenticated
from qproxy.proxy.relay.auth import (
    NODE_HEADER,
    RELAY_HEADER,
    RelayListener,
    RequestChecker,
    node_label,
)

log = logging.getLogger("qproxy.proxy.serve")


def body_length(request: web.Request) -> int | None:
    """The body length a relayed request was signed for (None: none or chunked)."""
    if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        return None
    return request.content_length


def relay_auth(listener: RelayListener) -> Middleware:
    """Middleware: this job's per-request relay signature, or 401 (429 past the bucket)."""
    checker = RequestChecker(listener.key, listener.job_id, listener.run)

    @web.middleware
    async def relay_auth_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        raw_node = request.headers.get(NODE_HEADER) or ""
        request.setdefault("audit", {}).update(via="relay", node=node_label(raw_node))
        conn = request.app[GUARD].of(request.transport) if GUARD in request.app else None
        why = checker.check(request.headers.get(RELAY_HEADER), request.method,
                            request.raw_path, body_length(request), raw_node)
        if why is not None:
            request["close"] = True  # conn_mw: no second try on this connection
            refuse_unauthenticated(request, f"not a relayed request of this Slurm job ({why})")
        if conn is not None:
            conn.promote()
        # relayed work is the job's own: audited one record each, refused when it cannot be
        authenticated(request)
        return await handler(request)

    return relay_auth_mw


async def start(ctx: JobContext, listener: RelayListener) -> tuple[web.AppRunner, Any]:
    """Serve the relay listener behind its own connection guard (the neighbour controls:
    timeouts, caps, unproven connections counted as a neighbour's); the caller closes both at
    shutdown."""
    app = create_app(ctx, relay_auth=relay_auth(listener))
    runner, server = await serve_guarded(app, listener.sock, None, by_uid=False)
    host, port = listener.sock.getsockname()[:2]
    log.info("job %s: relay listener on %s:%d", ctx.job_id, host, port)
    return runner, server
