"""The primary proxy's relay listener (see ``qproxy.proxy.relay.auth``): the same app, routes,
policies and job context as the job-facing listener, with one difference in authentication:
a request must carry this job's relay header (the job token alone is refused; the IAM
exchange is not served: each relay answers its own tasks' exchanges). Audit records of
relayed requests say ``via: relay`` and name the relaying node."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from qproxy.proxy.app import Handler, create_app, serve_guarded
from qproxy.proxy.context import CTX, GUARD, JobContext
from qproxy.proxy.policy.audited import refuse_unaudited
from qproxy.proxy.policy.errors import PolicyError
from qproxy.proxy.relay.auth import (
    NODE_HEADER,
    RELAY_HEADER,
    RelayListener,
    check_relay_token,
    node_label,
)

log = logging.getLogger("qproxy.proxy.serve")


def relay_auth(listener: RelayListener) -> Middleware:
    """Middleware: the relay header of this job, or 401."""

    @web.middleware
    async def relay_auth_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        request.setdefault("audit", {}).update(
            via="relay", node=node_label(request.headers.get(NODE_HEADER)))
        conn = request.app[GUARD].of(request.transport) if GUARD in request.app else None
        if not check_relay_token(listener.key, listener.job_id,
                                 request.headers.get(RELAY_HEADER)):
            request["close"] = True  # conn_mw: no second try on this connection
            raise PolicyError(401, "not a relayed request of this Slurm job")
        if conn is not None:
            conn.promote()
        # relayed work is the job's own: audited one record each, refused when it cannot be
        request["authenticated"] = True
        refuse_unaudited(request.app[CTX].audit)
        return await handler(request)

    return relay_auth_mw


async def start(ctx: JobContext, listener: RelayListener) -> tuple[web.AppRunner, Any]:
    """Serve the relay listener behind its own connection guard (connlimit: timeouts, caps,
    unproven connections counted as a neighbour's); the caller closes both at shutdown."""
    app = create_app(ctx, relay_auth=relay_auth(listener))
    runner, server = await serve_guarded(app, listener.sock, None, by_uid=False)
    host, port = listener.sock.getsockname()[:2]
    log.info("job %s: relay listener on %s:%d", ctx.job_id, host, port)
    return runner, server
