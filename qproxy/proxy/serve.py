"""`qproxy serve`: run one Slurm job's authenticating proxy (started by the prolog hook).

Contract with the Slurm hooks: once listening, write the env file (0600, atomically) with
``KEY=VALUE`` lines from ``qproxy.clientenv.client_env``; on SIGTERM cancel the job's
still-active upstream work, write the summary, finish the audit log, remove the env file and
exit 0 within a few seconds. Never imports qiskit. The skeleton it shares with the relay
(signals, env file, summary, background tasks, loop): ``qproxy.proxy.lifecycle``.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qproxy import config as cfg
from qproxy.clientenv import client_env
from qproxy.node.audit import AuditLog, open_job_log
from qproxy.node.envfile import remove_env_file, write_env_file
from qproxy.node.ledger import read_ledger, read_usage
from qproxy.proxy.auth import new_job_token
from qproxy.proxy.lifecycle import (
    EarlyStop,
    Signals,
    background,
    run_loop,
    setup_logging,
    stop_event,
    write_summary,
)
from qproxy.proxy.relay.auth import RelayListener, add_args, open_listener
from qproxy.records import METRICS_FILE, STATUS_FILE, JobSummary
from qproxy.secrets import SecretsError
from qproxy.upstream import read_credentials

if TYPE_CHECKING:  # aiohttp & co. are imported after the env file is written (see main)
    from qproxy.proxy.context import JobContext

log = logging.getLogger("qproxy.proxy.serve")
CLEANUP_TIMEOUT = 8.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="qproxy serve", description=__doc__)
    p.add_argument("--config", default=str(cfg.DEFAULT_CONFIG_PATH))
    p.add_argument("--job-id", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--backend", required=True, help="resource name from the config")
    p.add_argument("--lanes", type=int, required=True)
    p.add_argument("--end-time", type=float, required=True, help="epoch seconds")
    p.add_argument("--env-file", type=Path, required=True)
    p.add_argument("--port", type=int, default=None,
                   help="default: the first free port of [proxy].ports")
    p.add_argument("--account")
    p.add_argument("--audit-log", type=Path)
    p.add_argument("--ledger-file", type=Path)
    p.add_argument("--summary-file", type=Path)
    p.add_argument("--metrics-file", type=Path, help="default: metrics.prom beside the env file")
    add_args(p)  # a multi-node job's primary: --relay-listen, --relay-ports
    return p.parse_args(argv)


@dataclass
class Prepared:
    """Everything the proxy checks and opens before it announces itself (no aiohttp yet)."""

    resource: cfg.Resource
    upstream: cfg.UpstreamSettings
    lanes: int
    credentials: dict[str, str] = field(repr=False)  # the upstream's secrets
    ledger_path: Path
    jobs: list[str]
    sessions: list[str]
    audit: AuditLog
    booked: dict[str, float]
    relay: RelayListener | None = None  # a multi-node job's primary (qproxy.proxy.relay.auth)


def prepare(args: argparse.Namespace, conf: cfg.Config) -> Prepared:
    """Validate the request and read the secret and the ledger. Raises ConfigError or
    SecretsError (fatal: one line on stderr, exit 1, no env file)."""
    resource = conf.resource(args.backend)
    upstream = conf.upstream_for(resource)
    if args.lanes < 1:
        raise cfg.ConfigError("--lanes must be >= 1")
    # Defence in depth: the prolog checks this too, but the proxy is what holds the key.
    if resource.allowed_users and args.user not in resource.allowed_users:
        raise cfg.ConfigError(f"user {args.user!r} may not use {resource.name}")
    if resource.allowed_accounts and args.account not in resource.allowed_accounts:
        raise cfg.ConfigError(f"account {args.account!r} may not use {resource.name}")
    credentials = read_credentials(conf, upstream)
    ledger_path = args.ledger_file or args.env_file.parent / "ledger.jsonl"
    jobs, sessions = read_ledger(ledger_path)  # a restarted proxy keeps its job's work
    audit_path = args.audit_log or conf.audit_dir / f"job-{args.job_id}.jsonl"
    audit = open_job_log(conf, Path(audit_path), job_id=args.job_id, user=args.user)
    return Prepared(resource, upstream, min(args.lanes, resource.lanes), credentials,
                    ledger_path,
                    jobs, sessions, audit, read_usage(ledger_path))


def build_context(args: argparse.Namespace, conf: cfg.Config, token: str,
                  prep: Prepared | None = None) -> JobContext:
    from qproxy.node.ledger import Ledger
    from qproxy.proxy.auth import JobAuth
    from qproxy.proxy.context import JobContext
    from qproxy.proxy.metrics import ProxyMetrics
    from qproxy.proxy.policy.backend import BackendPolicy
    from qproxy.proxy.policy.inflight import InflightBudget
    from qproxy.proxy.policy.isolation import Ownership
    from qproxy.proxy.policy.lanes import LaneGate
    from qproxy.proxy.policy.sessions import SessionPolicy
    from qproxy.proxy.policy.tags import enforced_tags
    from qproxy.proxy.policy.timelimit import TimeLimit
    from qproxy.proxy.policy.unauth import UnauthGate
    from qproxy.proxy.usage import UsageBook
    from qproxy.upstream import connect

    prep = prep or prepare(args, conf)
    owned = Ownership()
    for j in prep.jobs:
        owned.add_job(j, "unknown")
    for s in prep.sessions:
        owned.add_session(s)
    lanes = LaneGate(prep.lanes, conf.proxy.lanes_mode, conf.proxy.lanes_wait_seconds)
    metrics = ProxyMetrics(prep.resource.name, lanes)
    client = connect(prep.upstream, prep.credentials)
    client.observe = metrics.upstream_call
    ledger = Ledger(prep.ledger_path)
    px = conf.proxy
    usage = UsageBook(client, ledger, prep.booked)
    usage.on_booked = metrics.booked
    return JobContext(
        config=conf,
        job_id=args.job_id,
        user=args.user,
        account=args.account,
        resource=prep.resource,
        upstream=prep.upstream,
        auth=JobAuth(token, args.job_id, conf.proxy.token_ttl_seconds),
        client=client,
        backend=BackendPolicy(prep.resource.name, prep.resource.backend),
        lanes=lanes,
        timelimit=TimeLimit(args.end_time),
        owned=owned,
        ledger=ledger,
        audit=prep.audit,
        tags=enforced_tags(args.job_id, args.user, args.account),
        unauth=UnauthGate(px.unauth_rate, px.unauth_burst, px.unauth_summary_seconds),
        inflight=InflightBudget(px.inflight_bytes),
        usage=usage,
        sessions=SessionPolicy(prep.lanes, prep.resource.dedicated_sessions),
        metrics=metrics,
    )


def metrics_path(args: argparse.Namespace) -> Path:
    return Path(args.metrics_file or args.env_file.parent / METRICS_FILE)


async def write_metrics(ctx: JobContext, path: Path) -> None:
    """The metrics file, now and every metrics_seconds (qproxy/proxy/metrics.py)."""
    import asyncio

    every = ctx.config.proxy.metrics_seconds
    while True:
        try:
            ctx.metrics.write(path)
        except OSError as exc:  # a full or read-only state dir: the job goes on
            log.warning("job %s: metrics not written: %s", ctx.job_id, exc)
        if every <= 0:
            return
        await asyncio.sleep(every)


async def poll_status(ctx: JobContext) -> None:
    """Track completion of active upstream jobs so lanes free up."""
    import asyncio

    from qproxy.proxy.routes.runtime import update_status
    from qproxy.upstream.base import UpstreamError

    while True:
        await asyncio.sleep(ctx.config.proxy.status_poll_seconds)
        for job_id in list(ctx.lanes.active):
            try:
                r = await ctx.client.get_job(job_id, {})
            except UpstreamError:
                continue
            if r.status == 200:
                await update_status(ctx, job_id, r.doc)
            elif r.status == 404:
                await ctx.lanes.finished(job_id)


async def warm_up(ctx: JobContext) -> None:
    """The upstream IAM exchange, off the readiness path (requests wait on the same lock)."""
    from qproxy.upstream.base import UpstreamError

    try:
        await ctx.client.token()
    except UpstreamError as exc:  # not fatal: upstream may come back
        log.warning("upstream not ready yet: %s", exc)


def job_uid(user: str) -> int | None:
    """The job user's uid: its connections are the job's own (connlimit)."""
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def listen(px: cfg.ProxySettings, port: int | None) -> socket.socket:
    """Bind the job's port with the stdlib, before aiohttp is even imported: connections
    made from then on wait in the kernel's backlog until the app serves them. ``port`` None:
    the first free port of ``[proxy].ports`` (privileged, see qproxy.node.ports); a given
    port (0 = any) is for tests and tools run by hand."""
    if port is None:
        from qproxy.node.ports import bind_privileged

        return bind_privileged(px.host, cfg.port_range(px.ports) or (0, 0),
                               f"[proxy] ports {px.ports}")
    family = socket.AF_INET6 if ":" in px.host else socket.AF_INET
    sock = socket.create_server((px.host, port), family=family, backlog=128)
    sock.setblocking(False)
    return sock


@contextmanager
def _background() -> Iterator[None]:
    """Load the app at a lower CPU priority: it happens while Slurm launches the job's step
    and runs task-env (both wait on a busy node; the job's first request comes much later,
    after its own Python start), then return to normal priority (root may; otherwise the
    proxy simply stays a little nicer)."""
    try:
        before = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, min(before + 10, 19))
    except OSError:
        yield
        return
    try:
        yield
    finally:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, before)
        except OSError:
            pass


def finish(args: argparse.Namespace, audit: AuditLog, backend: str, result: dict[str, Any],
           stats: dict[str, Any]) -> JobSummary:
    """The summary record (last of the audit log) and summary.json."""
    counted = JobSummary.from_cleanup(
        result, job_id=args.job_id, user=args.user, backend=backend,
        requests=stats["requests"], bytes_in=stats["bytes_in"], bytes_out=stats["bytes_out"])
    summary = write_summary(args, audit, counted)
    log.info("job %s: done (%d upstream jobs, %.3f quantum s)", args.job_id,
             summary.upstream_jobs, summary.quantum_seconds)
    return summary


async def run(args: argparse.Namespace, conf: cfg.Config, token: str, prep: Prepared,
              sock: socket.socket, signals: Signals,
              after_start: Callable[[], None] | None = None) -> int:
    import asyncio

    from qproxy.proxy import statusfile
    from qproxy.proxy.app import create_app, flush_unauthenticated, serve_guarded
    from qproxy.upstream.base import UpstreamError
    from qproxy.upstream.leftovers import cleanup

    ctx = build_context(args, conf, token, prep)
    stop = stop_event()
    loop = asyncio.get_running_loop()
    if signals.stop:  # arrived while we were loading
        stop.set()

    app = create_app(ctx)
    port = sock.getsockname()[1]
    app.cleanup_ctx.extend(background(task, stop) for task in (
        lambda: warm_up(ctx),
        lambda: poll_status(ctx),
        lambda: statusfile.keep_written(ctx, args.env_file.parent / STATUS_FILE, os.getpid(), port),
        lambda: write_metrics(ctx, metrics_path(args)),
    ))
    runner, server = await serve_guarded(app, sock, job_uid(args.user))
    if prep.relay is not None:
        from qproxy.proxy.relay import listen as relaylisten

        relay_runner, relay_server = await relaylisten.start(ctx, prep.relay)
    log.info("job %s: proxy for %s serving on %s:%d", args.job_id, ctx.resource.name,
             conf.proxy.host, sock.getsockname()[1])
    if after_start is not None:  # right away: a job may end within a fraction of a second,
        loop.call_soon(after_start)  # and its first request comes ~0.1 s after this anyway

    await stop.wait()
    log.info("job %s: shutting down", args.job_id)
    ctx.timelimit.end_time = min(ctx.timelimit.end_time, time.time())  # no new work
    # the background tasks (cleanup_ctx) stop with ``stop``: no status polls during cleanup
    seen = list(ctx.owned.jobs)
    try:
        await asyncio.wait_for(ctx.usage.drain(), CLEANUP_TIMEOUT / 4)
    except TimeoutError:
        pass
    try:
        result: dict[str, Any] = await asyncio.wait_for(
            cleanup(ctx.client, seen, sorted(ctx.owned.sessions), ctx.usage.booked),
            CLEANUP_TIMEOUT,
        )
    except (TimeoutError, UpstreamError) as exc:
        log.warning("cleanup incomplete: %s", type(exc).__name__)
        result = {"upstream_jobs": len(ctx.owned.jobs), "sessions": len(ctx.owned.sessions),
                  "cancelled_at_shutdown": [], "quantum_seconds": 0.0, "cleanup": "incomplete"}
    remove_env_file(args.env_file)
    server.close()
    await runner.cleanup()
    if prep.relay is not None:
        relay_server.close()
        await relay_runner.cleanup()
    # A submission already in flight at SIGTERM may have created a job after the first pass.
    late = [j for j in ctx.owned.jobs if j not in seen]
    if late:
        try:
            extra = await asyncio.wait_for(cleanup(ctx.client, late, [], ctx.usage.booked),
                                           CLEANUP_TIMEOUT / 2)
            result["cancelled_at_shutdown"] += extra["cancelled_at_shutdown"]
            result["quantum_seconds"] += extra["quantum_seconds"]
            result["upstream_jobs"] += extra["upstream_jobs"]
        except (TimeoutError, UpstreamError):
            pass
    await ctx.client.close()
    flush_unauthenticated(ctx.controls)
    ctx.metrics.book_total(float(result.get("quantum_seconds") or 0.0))
    try:  # the final figures; the epilog folds them into the node's totals
        ctx.metrics.write(metrics_path(args))
    except OSError as exc:
        log.warning("job %s: metrics not written: %s", ctx.job_id, exc)
    finish(args, ctx.audit, ctx.resource.name, result, ctx.stats)
    return 0


def main(argv: list[str], after_start: Callable[[], None] | None = None) -> int:
    """Start order, so that the job's launch never waits for aiohttp's imports (~200 ms):
    validate, read the secret and the ledger, open the audit log, bind the port, write the
    env file and the audit ``start`` record -- then import the app and serve. A job that
    connects early waits in the listen backlog. A SIGTERM that arrives before the app runs, with no
    upstream work in the ledger, ends the proxy at once with the same summary."""
    args = parse_args(argv)
    setup_logging()
    signals = Signals().install()
    try:
        conf = cfg.load(args.config)
        prep = prepare(args, conf)
        sock = listen(conf.proxy, args.port)
        prep.relay = open_listener(args, conf)
    except (cfg.ConfigError, SecretsError, OSError) as exc:
        print(f"qproxy serve: {exc}", file=sys.stderr)
        return 1
    try:
        token = new_job_token()
        port = sock.getsockname()[1]
        env = client_env(f"http://{conf.proxy.host}:{port}", token, prep.upstream.instance)
        env.update(prep.relay.env() if prep.relay else {})
        write_env_file(args.env_file, env)
        # still the log's first record: nothing is served before the app runs, below
        prep.audit.record(
            "start", **prep.audit.chain_fields(), backend=prep.resource.name,
            upstream_backend=prep.resource.backend,
            lanes=prep.lanes, end_time=args.end_time, port=port, account=args.account,
            pid=os.getpid(),
        )
        log.info("job %s: proxy for %s listening on %s:%d", args.job_id, prep.resource.name,
                 conf.proxy.host, port)
        try:
            signals.interruptible = not (prep.jobs or prep.sessions)
            if signals.stop and signals.interruptible:
                raise EarlyStop
            with _background():
                import aiohttp.web  # noqa: F401  (the heavy part of the start)

                import qproxy.proxy.app  # noqa: F401
            signals.interruptible = False
        except EarlyStop:
            signals.interruptible = False
            log.info("job %s: stopped before serving", args.job_id)
            remove_env_file(args.env_file)
            sock.close()
            finish(args, prep.audit, prep.resource.name,
                   {"upstream_jobs": 0, "sessions": 0, "cancelled_at_shutdown": [],
                    "quantum_seconds": 0.0},
                   {"requests": 0, "bytes_in": 0, "bytes_out": 0})
            return 0
        return run_loop(run(args, conf, token, prep, sock, signals, after_start))
    except (cfg.ConfigError, SecretsError, OSError) as exc:
        print(f"qproxy serve: {exc}", file=sys.stderr)
        remove_env_file(args.env_file)
        return 1
    except BaseException:  # never leave an env file pointing at a proxy that is gone
        remove_env_file(args.env_file)
        raise
