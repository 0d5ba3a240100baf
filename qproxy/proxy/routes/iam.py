"""IAM token exchange for the job: the per-job token in, a short-lived JWT out.

The client (ibm-cloud-sdk-core) decodes the JWT for ``exp``/``iat`` to know when to refresh,
and re-exchanges the API key then, so no refresh-token flow is needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import parse_qs

import orjson
from aiohttp import web

from qproxy.proxy.auth import JobAuth
from qproxy.proxy.context import CTX
from qproxy.proxy.policy.audited import refuse_unaudited
from qproxy.proxy.policy.errors import PolicyError

GRANT = "urn:ibm:params:oauth:grant-type:apikey"


async def token(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return await exchange(request, ctx.auth, on_refused=ctx.unauth.allow,
                          on_accepted=lambda: refuse_unaudited(ctx.audit))


async def exchange(request: web.Request, auth: JobAuth, *,
                   on_refused: Callable[[], object] | None = None,
                   on_accepted: Callable[[], object] | None = None) -> web.Response:
    """The exchange against one JobAuth (a job's proxy's, or a relay's: qproxy.proxy.relay).
    ``on_refused``/``on_accepted``: the job's proxy counts refusals against its unauthenticated
    budget and refuses work it cannot audit (qproxy.proxy.policy.audited)."""
    if request.content_length is not None and request.content_length > 64 * 1024:
        raise PolicyError(413, "token request too large")
    raw = await request.content.read(64 * 1024 + 1)
    if len(raw) > 64 * 1024:
        raise PolicyError(413, "token request too large")
    request["bytes_in"] = len(raw)
    form = parse_qs(raw.decode("utf-8", "replace"))
    grant = form.get("grant_type", [""])[0]
    apikey = form.get("apikey", [""])[0]
    if grant != GRANT:
        raise PolicyError(400, f"unsupported grant_type; use {GRANT}")
    if not apikey or not auth.check_token(apikey):
        if on_refused is not None:
            on_refused()  # a failed exchange spends the unauthenticated budget too
        raise PolicyError(401, "invalid API key for this Slurm job's QPU proxy")
    request["authenticated"] = True
    if on_accepted is not None:
        on_accepted()
    jwt_token, exp = auth.mint()
    body = {
        "access_token": jwt_token,
        "refresh_token": "not_supported",
        "token_type": "Bearer",
        "expires_in": exp - int(time.time()),
        "expiration": exp,
        "scope": "ibm openid",
    }
    request.setdefault("audit", {})["decisions"] = {"token_issued": True}
    return web.Response(body=orjson.dumps(body), content_type="application/json")
