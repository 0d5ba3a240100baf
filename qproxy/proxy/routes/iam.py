"""IAM token exchange for the job: the per-job token in, a short-lived JWT out.

The client (ibm-cloud-sdk-core) decodes the JWT for ``exp``/``iat`` to know when to refresh,
and re-exchanges the API key then, so no refresh-token flow is needed.

Judged by the token first: an exchange with this job's token is served whatever the
unauthenticated buckets hold (before, a neighbour's junk emptied the proxy's one bucket and
every exchange got 429 before its token was read: issue 24). Only a refused exchange spends
its uid's bucket (``policy/unauth.py``) and gets 429 once that is empty. While a uid's bucket
is empty its exchanges may carry at most ``FORM_SMALL`` bytes (a client's form is ~130), so
reading junk bodies first costs the proxy little; the token is compared in constant time
(``JobAuth.check_token``: ``hmac.compare_digest``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import parse_qs

import orjson
from aiohttp import web

from qproxy.proxy.auth import JobAuth
from qproxy.proxy.context import CTX
from qproxy.proxy.neighbours import CONTROLS, TOO_MANY, peer_uid_of
from qproxy.proxy.policy.audited import refuse_unaudited
from qproxy.proxy.policy.errors import PolicyError

GRANT = "urn:ibm:params:oauth:grant-type:apikey"
FORM_MAX = 64 * 1024
FORM_SMALL = 1024


async def token(request: web.Request) -> web.Response:
    return await token_for(request, request.app[CTX].auth)


async def token_for(request: web.Request, auth: JobAuth) -> web.Response:
    """The exchange of any listener with the neighbour controls (a job's proxy, a relay)."""
    c = request.app[CONTROLS]
    uid = peer_uid_of(request)
    return await exchange(
        request, auth, on_refused=lambda: c.unauth.allow(uid),
        on_accepted=lambda: refuse_unaudited(c.audit),
        max_body=FORM_SMALL if c.unauth.exhausted(uid) else FORM_MAX,
        body_timeout=c.settings.client_body_timeout_seconds)


async def _read_form(request: web.Request, limit: int, timeout: float) -> bytes | None:
    """The whole body, or None when it is larger than ``limit``."""
    if request.content_length is not None and request.content_length > limit:
        return None
    buf = bytearray()
    try:
        while chunk := await asyncio.wait_for(request.content.readany(), timeout):
            buf += chunk
            if len(buf) > limit:
                return None
    except TimeoutError:
        raise PolicyError(408, f"request body not received within {timeout:g} s") from None
    return bytes(buf)


async def exchange(request: web.Request, auth: JobAuth, *,
                   on_refused: Callable[[], bool] | None = None,
                   on_accepted: Callable[[], object] | None = None,
                   max_body: int = FORM_MAX, body_timeout: float = 30.0) -> web.Response:
    """The exchange against one JobAuth.
    ``on_refused``: a refused exchange takes a token of its uid's unauthenticated bucket,
    False: answer 429; ``on_accepted``: the job's proxy refuses work it cannot audit
    (qproxy.proxy.policy.audited)."""
    raw = await _read_form(request, max_body, body_timeout)
    form = parse_qs(raw.decode("utf-8", "replace")) if raw is not None else {}
    grant = form.get("grant_type", [""])[0]
    apikey = form.get("apikey", [""])[0]
    if raw is not None and grant == GRANT and apikey and auth.check_token(apikey):
        request["bytes_in"] = len(raw)
        return _issue(request, auth, on_accepted)
    if on_refused is not None and not on_refused():
        raise PolicyError(429, TOO_MANY)
    if raw is None:
        raise PolicyError(413, "token request too large")
    request["bytes_in"] = len(raw)
    if grant != GRANT:
        raise PolicyError(400, f"unsupported grant_type; use {GRANT}")
    raise PolicyError(401, "invalid API key for this Slurm job's QPU proxy")


def _issue(request: web.Request, auth: JobAuth,
           on_accepted: Callable[[], object] | None) -> web.Response:
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
