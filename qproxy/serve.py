"""`qproxy serve`: run one Slurm job's authenticating proxy (started by the prolog hook).

Contract with the Slurm hooks: once listening, write the env file (0600, atomically) with
``KEY=VALUE`` lines from ``qproxy.clientenv.client_env``; on SIGTERM cancel the job's
still-active upstream work, write the summary, finish the audit log, remove the env file and
exit 0 within a few seconds. Never imports qiskit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from qproxy import config as cfg
from qproxy.app import create_app, setup_logging
from qproxy.audit import AuditLog
from qproxy.cleanup import Ledger, cleanup, read_ledger
from qproxy.clientenv import client_env
from qproxy.front.auth import JobAuth, new_job_token
from qproxy.front.context import JobContext
from qproxy.front.runtime import update_status
from qproxy.policy.backend import BackendPolicy
from qproxy.policy.isolation import Ownership
from qproxy.policy.lanes import LaneGate
from qproxy.policy.tags import enforced_tags
from qproxy.policy.timelimit import TimeLimit
from qproxy.secrets import SecretsError, get_secret
from qproxy.upstream.ibm_runtime import IBMRuntimeUpstream, UpstreamError

log = logging.getLogger("qproxy.serve")
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
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--account")
    p.add_argument("--audit-log", type=Path)
    p.add_argument("--ledger-file", type=Path)
    p.add_argument("--summary-file", type=Path)
    return p.parse_args(argv)


def write_private(path: Path, data: bytes) -> None:
    """Atomic write, mode 0600: readers see nothing or everything."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def build_context(args: argparse.Namespace, conf: cfg.Config, token: str) -> JobContext:
    resource = conf.resource(args.backend)
    upstream = conf.upstream_for(resource)
    if args.lanes < 1:
        raise cfg.ConfigError("--lanes must be >= 1")
    # Defence in depth: the prolog checks this too, but the proxy is what holds the key.
    if resource.allowed_users and args.user not in resource.allowed_users:
        raise cfg.ConfigError(f"user {args.user!r} may not use {resource.name}")
    if resource.allowed_accounts and args.account not in resource.allowed_accounts:
        raise cfg.ConfigError(f"account {args.account!r} may not use {resource.name}")
    lanes = min(args.lanes, resource.lanes)
    env_dir = args.env_file.parent
    audit_path = args.audit_log or conf.audit_dir / f"job-{args.job_id}.jsonl"
    owned = Ownership()
    ledger_path = args.ledger_file or env_dir / "ledger.jsonl"
    jobs, sessions = read_ledger(ledger_path)  # a restarted proxy keeps its job's work
    for j in jobs:
        owned.add_job(j, "unknown")
    for s in sessions:
        owned.add_session(s)
    return JobContext(
        config=conf,
        job_id=args.job_id,
        user=args.user,
        account=args.account,
        resource=resource,
        upstream=upstream,
        auth=JobAuth(token, args.job_id, conf.proxy.token_ttl_seconds),
        client=IBMRuntimeUpstream(upstream, get_secret(conf, upstream.api_key_secret)),
        backend=BackendPolicy(resource.name, resource.backend),
        lanes=LaneGate(lanes, conf.proxy.lanes_mode, conf.proxy.lanes_wait_seconds),
        timelimit=TimeLimit(args.end_time),
        owned=owned,
        ledger=Ledger(ledger_path),
        audit=AuditLog(Path(audit_path), job_id=args.job_id, user=args.user),
        tags=enforced_tags(args.job_id, args.user, args.account),
    )


async def poll_status(ctx: JobContext) -> None:
    """Track completion of active upstream jobs so lanes free up."""
    while True:
        await asyncio.sleep(ctx.config.proxy.status_poll_seconds)
        for job_id in list(ctx.lanes.active):
            try:
                code, doc, _ = await ctx.client.call("GET", f"/jobs/{job_id}")
            except UpstreamError:
                continue
            if code == 200:
                await update_status(ctx, job_id, doc)
            elif code == 404:
                await ctx.lanes.finished(job_id)


async def run(args: argparse.Namespace, conf: cfg.Config) -> int:
    token = new_job_token()
    ctx = build_context(args, conf, token)
    summary_path = args.summary_file or args.env_file.parent / "summary.json"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    try:
        await ctx.client.token()
    except UpstreamError as exc:  # not fatal: upstream may come back
        log.warning("upstream not ready yet: %s", exc)

    app = create_app(ctx)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, conf.proxy.host, args.port)
    await site.start()
    port = runner.addresses[0][1]
    env = client_env(f"http://{conf.proxy.host}:{port}", token, ctx.upstream.instance)
    ctx.audit.record(
        "start", backend=ctx.resource.name, upstream_backend=ctx.resource.backend,
        lanes=ctx.lanes.lanes, end_time=args.end_time, port=port, account=args.account,
        pid=os.getpid(),
    )
    write_private(args.env_file, "".join(f"{k}={v}\n" for k, v in env.items()).encode())
    log.info("job %s: proxy for %s listening on %s:%d", args.job_id, ctx.resource.name,
             conf.proxy.host, port)
    poller = asyncio.create_task(poll_status(ctx))

    await stop.wait()
    log.info("job %s: shutting down", args.job_id)
    ctx.timelimit.end_time = min(ctx.timelimit.end_time, time.time())  # no new work
    poller.cancel()
    seen = list(ctx.owned.jobs)
    try:
        result: dict[str, Any] = await asyncio.wait_for(
            cleanup(ctx.client, seen, sorted(ctx.owned.sessions)),
            CLEANUP_TIMEOUT,
        )
    except (TimeoutError, UpstreamError) as exc:
        log.warning("cleanup incomplete: %s", type(exc).__name__)
        result = {"upstream_jobs": len(ctx.owned.jobs), "sessions": len(ctx.owned.sessions),
                  "cancelled_at_shutdown": [], "quantum_seconds": 0.0, "cleanup": "incomplete"}
    try:
        args.env_file.unlink()
    except FileNotFoundError:
        pass
    await runner.cleanup()
    # A submission already in flight at SIGTERM may have created a job after the first pass.
    late = [j for j in ctx.owned.jobs if j not in seen]
    if late:
        try:
            extra = await asyncio.wait_for(cleanup(ctx.client, late, []), CLEANUP_TIMEOUT / 2)
            result["cancelled_at_shutdown"] += extra["cancelled_at_shutdown"]
            result["quantum_seconds"] += extra["quantum_seconds"]
            result["upstream_jobs"] += extra["upstream_jobs"]
        except (TimeoutError, UpstreamError):
            pass
    await ctx.client.close()
    summary = {
        "job_id": args.job_id,
        "user": args.user,
        "backend": ctx.resource.name,
        **result,
        "requests": ctx.stats["requests"],
        "bytes_in": ctx.stats["bytes_in"],
        "bytes_out": ctx.stats["bytes_out"],
    }
    ctx.audit.record("summary", **summary)
    summary["audit_log"] = str(ctx.audit.path)
    summary["audit_head"] = ctx.audit.head
    summary["audit_records"] = ctx.audit.count
    ctx.audit.close()
    write_private(summary_path, orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    log.info("job %s: done (%d upstream jobs, %.3f quantum s)", args.job_id,
             summary["upstream_jobs"], summary["quantum_seconds"])
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        conf = cfg.load(args.config)
        return asyncio.run(run(args, conf))
    except (cfg.ConfigError, SecretsError, OSError) as exc:
        print(f"qproxy serve: {exc}", file=sys.stderr)
        return 1
