"""``qproxy serve --relay-to HOST:PORT``: a multi-node job's proxy on every node but its first.

It holds no vendor key (it never reads the secrets file) and enforces no QPU policy itself:
it authenticates this node's tasks with its own per-job token, exactly like a job's proxy
(the client's IAM exchange is answered here, ``routes.iam``), and forwards every Runtime
API request -- method, path, query, the headers a proxy forwards, the body streamed -- to the
job's primary proxy with a relay header signed for that request (``qproxy.proxy.relay.auth``:
time, run, nonce, method, target, body length, node), streaming the answer back. Its port has
the job port's neighbour controls (``qproxy.proxy.neighbours``): connection guard,
unauthenticated requests summarised per uid and 429 past the bucket, a keyed and capped audit
log, 503 when it cannot audit. So every task of the job, on any node, goes through the
primary's one lane gate, ownership and audit log, and the job never holds anything worth
more than its own job.

Same contract with the Slurm hooks as ``qproxy serve`` (the skeleton both share:
``qproxy.proxy.lifecycle``): once listening, the env file (the same client variables); on
SIGTERM stop, write the summary (requests and bytes; upstream usage is the primary's),
remove the env file, exit 0. A primary that is gone is a 502 in the Runtime API's error
shape.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qproxy import config as cfg
from qproxy.clientenv import client_env
from qproxy.node.audit import AuditLog, open_job_log
from qproxy.node.envfile import remove_env_file, write_env_file
from qproxy.proxy.auth import JobAuth, new_job_token
from qproxy.proxy.lifecycle import (
    EarlyStop,
    Signals,
    setup_logging,
    stop_event,
    write_summary,
)
from qproxy.proxy.relay.auth import (
    NODE_HEADER,
    RELAY_HEADER,
    format_hostport,
    load_cluster_key,
    node_label,
    parse_hostport,
    sign_request,
)
from qproxy.records import JobSummary
from qproxy.runtime_api import API_PREFIXES, IAM_TOKEN_PATH
from qproxy.secrets import SecretsError

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

    from qproxy.proxy.neighbours import Controls

log = logging.getLogger("qproxy.proxy.relay")
CHUNK = 64 * 1024
CONNECT_TIMEOUT = 10.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="qproxy serve --relay-to", description=__doc__)
    p.add_argument("--relay-to", required=True, metavar="HOST:PORT",
                   help="the job's primary proxy's relay listener")
    p.add_argument("--config", default=str(cfg.DEFAULT_CONFIG_PATH))
    p.add_argument("--job-id", required=True)
    p.add_argument("--user", default="")
    p.add_argument("--backend", required=True, help="resource name from the config")
    p.add_argument("--env-file", type=Path, required=True)
    p.add_argument("--node", default="", help="this node's name (sent to the primary)")
    p.add_argument("--run", type=int, default=0,
                   help="the job's restart count (bound into every relayed request)")
    p.add_argument("--port", type=int, default=None,
                   help="default: the first free port of [proxy].ports")
    p.add_argument("--lanes", type=int, default=0, help="informational: the primary counts")
    p.add_argument("--end-time", type=float, default=0.0, help="informational")
    p.add_argument("--audit-log", type=Path)
    p.add_argument("--summary-file", type=Path)
    return p.parse_args(argv)


@dataclass
class Relay:
    """What the relay's handlers share."""

    job_id: str
    node: str
    primary: str  # HOST:PORT as given
    base: str  # http://HOST:PORT
    key: bytes  # the cluster key: signs each relayed request (never logged)
    run: int  # the job's restart count, bound into each signature
    auth: JobAuth
    controls: Controls  # the neighbour controls every listener has (qproxy.proxy.neighbours)
    max_request_bytes: int
    read_timeout: float
    session: aiohttp.ClientSession | None = None

    @property
    def audit(self) -> AuditLog:
        return self.controls.audit

    @property
    def stats(self) -> dict[str, Any]:
        return self.controls.stats


# --- the app ------------------------------------------------------------------------------
def create_app(relay: Relay) -> web.Application:
    """The job-facing app of a relay: the same neighbour controls as the job's port (conn,
    audit: unauthenticated requests counted and summarised per uid, 429 past the bucket, one
    keyed record per authenticated request, 503 when it cannot be written), the same error
    shape; its own token exchange; every Runtime API request forwarded."""
    from aiohttp import web

    from qproxy.proxy.app import error_mw
    from qproxy.proxy.neighbours import CONTROLS, audit_mw, conn_mw
    from qproxy.proxy.routes import iam

    key: web.AppKey[Relay] = web.AppKey("qproxy_relay", Relay)

    async def token(request: web.Request) -> web.StreamResponse:
        return await iam.token_for(request, relay.auth)

    async def api(request: web.Request) -> web.StreamResponse:
        return await forward(relay, request)

    app = web.Application(middlewares=[conn_mw, audit_mw, error_mw, _auth_mw(relay)],
                          client_max_size=relay.max_request_bytes)
    app[key] = relay
    app[CONTROLS] = relay.controls
    app.router.add_route("POST", IAM_TOKEN_PATH, token)
    for prefix in API_PREFIXES:
        app.router.add_route("*", prefix + "/{tail:.*}", api)
    app.cleanup_ctx.append(lambda _app: _session(relay))
    return app


def _source_socket(addr_info: Any) -> Any:
    """Connections to the primary come from a privileged source port where we can bind one
    (root: always in production), so the primary's connection guard counts them as a node's
    root, never as a neighbour's; else any port (the relay header still proves them)."""
    import socket

    from qproxy.node.ports import reserved_source_socket

    family = addr_info[0]
    try:
        sock = reserved_source_socket(family)
    except OSError:
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


async def _session(relay: Relay) -> Any:
    import aiohttp

    relay.session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT,
                                      sock_read=relay.read_timeout),
        connector=aiohttp.TCPConnector(limit=64, socket_factory=_source_socket),
        skip_auto_headers=("User-Agent",))
    yield
    await relay.session.close()


def _auth_mw(relay: Relay) -> Any:
    from aiohttp import web

    from qproxy.proxy.neighbours import authenticated, refuse_unauthenticated

    @web.middleware
    async def auth_mw(request: web.Request, handler: Any) -> web.StreamResponse:
        request.setdefault("audit", {})["via"] = "relay"
        if RELAY_HEADER in request.headers:
            refuse_unauthenticated(request, f"{RELAY_HEADER} is not accepted on this listener")
        if request.path != IAM_TOKEN_PATH:  # the exchange is judged by its token (iam.py)
            reason = relay.auth.check_header(request.headers.get("Authorization"))
            if reason is not None:
                refuse_unauthenticated(request, reason)
            authenticated(request)
        resp: web.StreamResponse = await handler(request)
        return resp

    return auth_mw


async def forward(relay: Relay, request: web.Request) -> web.StreamResponse:
    """One Runtime API request to the primary and its answer back, both streamed."""
    import aiohttp
    from aiohttp import web
    from yarl import URL

    from qproxy.proxy.policy.errors import PolicyError
    from qproxy.proxy.relay.listen import body_length
    from qproxy.runtime_api import REQUEST_HEADERS, RESPONSE_HEADERS

    if ".." in request.path.split("/"):
        raise PolicyError(404, f"unknown route: {request.method[:16]} {request.path[:200]}")
    limit = relay.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PolicyError(413, f"request body larger than the limit of {limit} bytes")
    headers = {h: request.headers[h] for h in REQUEST_HEADERS if h in request.headers}
    data = _body(request) if request.body_exists else None
    length = body_length(request) if data is not None else None
    if length:  # sent as it came (exactly this many bytes): the signature binds it
        headers["Content-Length"] = str(length)
    target = request.rel_url.raw_path_qs
    headers[RELAY_HEADER] = sign_request(relay.key, relay.job_id, relay.run, request.method,
                                         target, length, relay.node)
    headers[NODE_HEADER] = relay.node
    url = URL(relay.base + target, encoded=True)
    assert relay.session is not None
    out: web.StreamResponse | None = None
    try:
        async with relay.session.request(request.method, url, data=data, headers=headers,
                                         allow_redirects=False) as resp:
            out = web.StreamResponse(status=resp.status)
            for h in RESPONSE_HEADERS:
                if h in resp.headers:
                    out.headers[h] = resp.headers[h]
            if resp.content_length is not None and "Content-Encoding" not in resp.headers:
                out.content_length = resp.content_length
            await out.prepare(request)
            sent = 0
            async for chunk in resp.content.iter_chunked(CHUNK):
                sent += len(chunk)
                request["bytes_out"] = sent
                await out.write(chunk)
            await out.write_eof()
            return out
    except (aiohttp.ClientError, TimeoutError) as exc:
        if out is not None and out.prepared:  # half an answer sent: only hanging up is honest
            raise ConnectionResetError(f"primary proxy connection lost: {exc}") from None
        log.warning("job %s: primary proxy %s: %s: %s", relay.job_id, relay.primary,
                    type(exc).__name__, exc)
        raise PolicyError(502, f"the QPU proxy on this job's first node ({relay.primary}) "
                       f"cannot be reached: {type(exc).__name__}") from None


async def _body(request: web.Request) -> Any:
    seen = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        seen += len(chunk)
        request["bytes_in"] = seen
        yield chunk


# --- the process (skeleton shared with serve: qproxy.proxy.lifecycle) -----------------------
def main(argv: list[str]) -> int:
    """Load the config and the cluster key (never the secrets), bind, write the env file,
    then import aiohttp and serve until SIGTERM."""
    args = parse_args(argv)
    setup_logging()
    Signals(interruptible=True).install()  # until the loop owns them: stop at once
    try:
        target = parse_hostport(args.relay_to)
        if target is None:
            raise cfg.ConfigError(f"--relay-to must be HOST:PORT, got {args.relay_to!r}")
        conf = cfg.load(args.config)
        resource = conf.resource(args.backend)
        instance = conf.upstream_for(resource).instance
        key = load_cluster_key(conf.cluster_key_file)
        from qproxy.proxy.serve import listen

        sock = listen(conf.proxy, args.port)
    except (cfg.ConfigError, SecretsError, OSError) as exc:
        print(f"qproxy serve: {exc}", file=sys.stderr)
        return 1
    except EarlyStop:
        return 0
    audit_path = args.audit_log or conf.audit_dir / f"job-{args.job_id}.jsonl"
    primary = format_hostport(*target)
    node = node_label(args.node) if args.node else "?"
    try:
        # keyed and capped like the job's proxy's (qproxy.node.audit)
        audit = open_job_log(conf, Path(audit_path), job_id=args.job_id, user=args.user)
        token = new_job_token()
        port = sock.getsockname()[1]
        env = client_env(f"http://{conf.proxy.host}:{port}", token, instance)
        write_env_file(args.env_file, env)
        audit.record("start", **audit.chain_fields(), role="relay", backend=resource.name,
                     primary=primary, node=node, port=port, pid=os.getpid(), run=args.run)
        log.info("job %s: relay for %s on %s:%d -> primary %s", args.job_id, resource.name,
                 conf.proxy.host, port, primary)
        from qproxy.proxy.neighbours import Controls

        relay = Relay(
            job_id=args.job_id, node=node, primary=primary, base=f"http://{primary}",
            key=key, run=args.run,
            auth=JobAuth(token, args.job_id, conf.proxy.token_ttl_seconds),
            controls=Controls.of(args.job_id, conf.proxy, audit),
            max_request_bytes=conf.proxy.max_request_bytes,
            read_timeout=max(900.0, conf.proxy.lanes_wait_seconds + 120))
        try:
            asyncio.run(_serve(relay, sock, args.user))
        except EarlyStop:
            pass
        _finish(args, relay, resource.name)
        return 0
    except OSError as exc:
        print(f"qproxy serve: {exc}", file=sys.stderr)
        return 1
    finally:
        remove_env_file(args.env_file)


async def _serve(relay: Relay, sock: Any, user: str) -> None:
    from qproxy.proxy.neighbours import flush_unauthenticated, serve_guarded
    from qproxy.proxy.serve import job_uid

    stop = stop_event()
    runner, server = await serve_guarded(create_app(relay), sock, job_uid(user))
    await stop.wait()
    log.info("job %s: relay shutting down", relay.job_id)
    server.close()
    await runner.cleanup()
    flush_unauthenticated(relay.controls)


def _finish(args: argparse.Namespace, relay: Relay, backend: str) -> None:
    st = relay.stats
    counted = JobSummary(job_id=args.job_id, user=args.user, backend=backend,
                         requests=st["requests"], bytes_in=st["bytes_in"],
                         bytes_out=st["bytes_out"])
    write_summary(args, relay.audit, counted, role="relay")
    log.info("job %s: relay done (%d requests)", args.job_id, relay.stats["requests"])
