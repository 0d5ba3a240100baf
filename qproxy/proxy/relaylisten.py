"""The primary proxy's relay listener (see ``qproxy.proxy.relayauth``): the same app, routes,
policies and job context as the job-facing listener, with one difference in authentication:
a request must carry this job's relay header (the job token alone is refused; the IAM
exchange is not served: each relay answers its own tasks' exchanges). Audit records of
relayed requests say ``via: relay`` and name the relaying node."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Middleware

from qproxy.proxy.app import Handler, create_app
from qproxy.proxy.context import CTX, JobContext
from qproxy.proxy.policy.audited import refuse_unaudited
from qproxy.proxy.policy.errors import PolicyError
from qproxy.proxy.relayauth import (
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
        if not check_relay_token(listener.key, listener.job_id,
                                 request.headers.get(RELAY_HEADER)):
            raise PolicyError(401, "not a relayed request of this Slurm job")
        # relayed work is the job's own: audited one record each, refused when it cannot be
        request["authenticated"] = True
        refuse_unaudited(request.app[CTX].audit)
        return await handler(request)

    return relay_auth_mw


async def start(ctx: JobContext, listener: RelayListener) -> web.AppRunner:
    """Serve the relay listener; the caller cleans the runner up at shutdown."""
    app = create_app(ctx, relay_auth=relay_auth(listener))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, listener.sock).start()
    host, port = listener.sock.getsockname()[:2]
    log.info("job %s: relay listener on %s:%d", ctx.job_id, host, port)
    return runner
