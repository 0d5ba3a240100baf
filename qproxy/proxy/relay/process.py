"""``qproxy serve --relay-to HOST:PORT``: a multi-node job's proxy on every node but its first.

It holds no vendor key (it never reads the secrets file) and enforces no QPU policy itself:
it authenticates this node's tasks with its own per-job token, exactly like a job's proxy
(the client's IAM exchange is answered here, ``routes.iam``), and forwards every Runtime
API request -- method, path, query, the headers a proxy forwards, the body streamed -- to the
job's primary proxy with this job's relay header (``qproxy.proxy.relay.auth``), streaming the
answer back. So every task of the job, on any node, goes through the primary's one lane
gate, ownership and audit log, and the job never holds anything worth more than its own job.

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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qproxy import config as cfg
from qproxy.clientenv import client_env
from qproxy.node.audit import AuditLog
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
    relay_token,
)
from qproxy.records import JobSummary
from qproxy.runtime_api import API_PREFIXES, IAM_TOKEN_PATH
from qproxy.secrets import SecretsError

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

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
    header: str  # this job's relay header value (never logged)
    auth: JobAuth
    audit: AuditLog
    max_request_bytes: int
    read_timeout: float
    session: aiohttp.ClientSession | None = None
    stats: dict[str, int] = field(
        default_factory=lambda: {"requests": 0, "bytes_in": 0, "bytes_out": 0})


# --- the app ------------------------------------------------------------------------------
def create_app(relay: Relay) -> web.Application:
    from aiohttp import web

    from qproxy.proxy.routes import iam

    key: web.AppKey[Relay] = web.AppKey("qproxy_relay", Relay)

    async def token(request: web.Request) -> web.StreamResponse:
        return await iam.exchange(request, relay.auth)

    async def api(request: web.Request) -> web.StreamResponse:
        return await forward(relay, request)

    app = web.Application(middlewares=[_audit_mw(relay), _error_mw(), _auth_mw(relay)])
    app[key] = relay
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


def _audit_mw(relay: Relay) -> Any:
    from aiohttp import web

    @web.middleware
    async def audit_mw(request: web.Request, handler: Any) -> web.StreamResponse:
        start = time.monotonic()
        status = 500
        try:
            resp: web.StreamResponse = await handler(request)
            status = resp.status
            return resp
        except (asyncio.CancelledError, ConnectionResetError):
            status = 499
            raise
        finally:
            bytes_in = int(request.get("bytes_in", 0))
            bytes_out = int(request.get("bytes_out", 0))
            relay.stats["requests"] += 1
            relay.stats["bytes_in"] += bytes_in
            relay.stats["bytes_out"] += bytes_out
            relay.audit.record("request", method=request.method, path=request.path,
                               status=status, bytes_in=bytes_in, bytes_out=bytes_out,
                               latency_ms=round((time.monotonic() - start) * 1000, 1),
                               via="relay", **request.get("audit", {}))

    return audit_mw


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _error_mw() -> Any:
    from aiohttp import web

    from qproxy.proxy.policy.errors import PolicyError
    from qproxy.proxy.routes.errors import error_response

    @web.middleware
    async def error_mw(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            resp: web.StreamResponse = await handler(request)
            return resp
        except (PolicyError, _Refused) as exc:
            request.setdefault("audit", {})["refused"] = exc.message
            return error_response(exc.status, exc.message)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            reason = "unknown route" if exc.status == 404 else exc.reason
            return error_response(exc.status, f"{reason}: {request.method} {request.path}")
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:  # noqa: BLE001 - never a traceback to the job
            log.exception("internal error on %s %s", request.method, request.path)
            return error_response(500, "internal relay error")

    return error_mw


def _auth_mw(relay: Relay) -> Any:
    from aiohttp import web

    @web.middleware
    async def auth_mw(request: web.Request, handler: Any) -> web.StreamResponse:
        if RELAY_HEADER in request.headers:
            raise _Refused(401, f"{RELAY_HEADER} is not accepted on this listener")
        if request.path != IAM_TOKEN_PATH:
            reason = relay.auth.check_header(request.headers.get("Authorization"))
            if reason is not None:
                raise _Refused(401, reason)
        resp: web.StreamResponse = await handler(request)
        return resp

    return auth_mw


async def forward(relay: Relay, request: web.Request) -> web.StreamResponse:
    """One Runtime API request to the primary and its answer back, both streamed."""
    import aiohttp
    from aiohttp import web
    from yarl import URL

    from qproxy.proxy.routes.runtime import FORWARD_HEADERS, RESPONSE_HEADERS

    if ".." in request.path.split("/"):
        raise _Refused(404, f"unknown route: {request.method} {request.path}")
    limit = relay.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _Refused(413, f"request body larger than the limit of {limit} bytes")
    headers = {h: request.headers[h] for h in FORWARD_HEADERS if h in request.headers}
    headers[RELAY_HEADER] = relay.header
    headers[NODE_HEADER] = relay.node
    url = URL(relay.base + request.rel_url.raw_path_qs, encoded=True)
    data = _body(request) if request.body_exists else None
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
        raise _Refused(502, f"the QPU proxy on this job's first node ({relay.primary}) "
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
        audit = AuditLog(Path(audit_path), job_id=args.job_id, user=args.user)
        token = new_job_token()
        port = sock.getsockname()[1]
        env = client_env(f"http://{conf.proxy.host}:{port}", token, instance)
        write_env_file(args.env_file, env)
        audit.record("start", role="relay", backend=resource.name, primary=primary,
                     node=node, port=port, pid=os.getpid())
        log.info("job %s: relay for %s on %s:%d -> primary %s", args.job_id, resource.name,
                 conf.proxy.host, port, primary)
        relay = Relay(
            job_id=args.job_id, node=node, primary=primary, base=f"http://{primary}",
            header=relay_token(key, args.job_id),
            auth=JobAuth(token, args.job_id, conf.proxy.token_ttl_seconds), audit=audit,
            max_request_bytes=conf.proxy.max_request_bytes,
            read_timeout=max(900.0, conf.proxy.lanes_wait_seconds + 120))
        try:
            asyncio.run(_serve(relay, sock))
        except EarlyStop:
            pass
        _finish(args, relay, resource.name)
        return 0
    except OSError as exc:
        print(f"qproxy serve: {exc}", file=sys.stderr)
        return 1
    finally:
        remove_env_file(args.env_file)


async def _serve(relay: Relay, sock: Any) -> None:
    from aiohttp import web

    stop = stop_event()
    runner = web.AppRunner(create_app(relay), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    await stop.wait()
    log.info("job %s: relay shutting down", relay.job_id)
    await runner.cleanup()


def _finish(args: argparse.Namespace, relay: Relay, backend: str) -> None:
    st = relay.stats
    counted = JobSummary(job_id=args.job_id, user=args.user, backend=backend,
                         requests=st["requests"], bytes_in=st["bytes_in"],
                         bytes_out=st["bytes_out"])
    write_summary(args, relay.audit, counted, role="relay")
    log.info("job %s: relay done (%d requests)", args.job_id, relay.stats["requests"])
