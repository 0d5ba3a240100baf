"""Job prolog (root, at allocation with PrologFlags=Alloc): validate the request against the
admin config and Slurm's view of the job, lease the lanes, start the job's proxy and write the
connection record. Never fails the prolog: errors go to the job's state dir for task-env.

A multi-node job runs this on every node. The job's lanes must hold across all of them, so
only its first node (Slurm's batch host, else the first of its nodes) leases them and starts
the PRIMARY proxy (vendor key, lane gate, audit; plus a relay listener, see
qproxy.proxy.relay.auth), publishing the listener in the job's AdminComment
(``qpu backend=B lanes=N primary=ADDR:PORT run=R sig=S``, S signed with the cluster key); every
other node waits for that -- read from ``squeue --json``, never from ``scontrol -o`` text the
job's user can write into, its signature checked and ADDR checked against the first node's
NodeAddr -- and starts a RELAY proxy (qproxy.proxy.relay: no vendor key, forwards to the
primary)."""

from __future__ import annotations

import os
import pwd
import socket
import time

from qproxy.config import Config, Resource
from qproxy.node.process import start_ticks
from qproxy.records import ProxyRecord
from qproxy.slurm import lease, proxyproc, spares
from qproxy.slurm.state import JobState, audit_stem, log
from qproxy.slurmcli.admincomment import (
    finish_admin_comment,
    qpu_comment,
    set_admin_comment,
    start_admin_comment,
)
from qproxy.slurmcli.cluster import hostnames, node_addr
from qproxy.slurmcli.jobs import het_components, job_info
from qproxy.slurmcli.record import JobRecord
from qproxy.slurmcli.run import SlurmError


class JobRefused(Exception):
    """A user-facing reason this job gets no QPU (shown on the job's stderr)."""


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _job_info(job_id: str) -> JobRecord:
    """The job is RUNNING/CONFIGURING when the prolog runs; retry briefly on a busy ctld."""
    last: Exception | None = None
    for _ in range(5):
        try:
            return job_info(job_id)
        except SlurmError as exc:
            last = exc
            time.sleep(1)
    raise JobRefused(f"cannot read job {job_id} from Slurm ({last}); ask your admin")


def lanes_for(resource: Resource, info: JobRecord) -> int:
    """Lanes come only from what Slurm allocated: -L <resource>:N, else --gres=qpu:N."""
    if info.licenses.get(resource.name):
        return info.licenses[resource.name]
    if info.gres_qpu:
        return info.gres_qpu
    other = ", ".join(sorted(info.licenses)) or "none"
    raise JobRefused(
        f"--q_backend={resource.name} needs QPU lanes from Slurm: add --gres=qpu:N or "
        f"-L {resource.name}:N (N <= {resource.lanes}); job's licences: {other}"
    )


def het_without_lanes(backend: str, info: JobRecord) -> str | None:
    """Why this job gets no QPU and no error, or None. A heterogeneous job's --q_backend (a
    SPANK option) reaches every component, but -L/--gres only the components that asked: a
    component without lanes is the job's classical part, not a mistake, unless no component
    holds lanes at all (then the usual "needs QPU lanes" error says what to add)."""
    if not info.het_job_id or info.licenses.get(backend) or info.gres_qpu:
        return None
    try:
        holders = [c.job_id for c in het_components(info.het_job_id)
                   if c.job_id != info.job_id and (c.licenses.get(backend) or c.gres_qpu)]
    except SlurmError as exc:  # cannot tell: no lanes here either way, so no QPU, no failure
        log.info("job %s: reading the other components failed: %s", info.job_id, exc)
        holders = ["?"]
    if not holders:
        return None
    return (f"component {info.job_id} of heterogeneous job {info.het_job_id} has no lanes of "
            f"{backend} (component {', '.join(holders)} does): no QPU for its tasks")


def check(config: Config, backend: str, user: str, info: JobRecord) -> tuple[Resource, int]:
    if backend not in config.resources:
        known = ", ".join(sorted(config.resources)) or "none"
        raise JobRefused(f"unknown QPU backend '{backend}' (this cluster has: {known})")
    resource = config.resources[backend]
    lanes = lanes_for(resource, info)
    if lanes > resource.lanes:
        raise JobRefused(
            f"job asked for {lanes} lanes of {backend}, which has only {resource.lanes}")
    if resource.allowed_users and user not in resource.allowed_users:
        raise JobRefused(f"user {user} may not use QPU {backend}")
    if resource.allowed_accounts and info.account not in resource.allowed_accounts:
        raise JobRefused(f"account '{info.account}' may not use QPU {backend}")
    return resource, lanes


# Slurm may start a job while the device's lanes are still leased on this node: a GRES count
# shared by several devices admits more jobs than one device has lanes, and a finished job's
# lanes are leased until its epilog has run. Such overlaps are usually brief (jobs ending),
# so wait a little for the lanes before failing the job with a clear message.
SETTLE_SECONDS = 15.0


def acquire_lanes(config: Config, resource: Resource, job_id: str, lanes: int) -> None:
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        try:
            lease.acquire(config, resource, job_id, lanes)
            return
        except lease.LanesBusy as exc:
            if time.monotonic() >= deadline:
                raise JobRefused(str(exc)) from None
        time.sleep(0.2)


def start_proxy(config: Config, job: JobState, resource: Resource, user: str, lanes: int,
                info: JobRecord, extra: tuple[str, ...] = ()) -> proxyproc.Recorded:
    """The job's proxy: forked by a ready spare if there is one (qproxy.slurm.spares), else a
    new process."""
    args = ["--config", str(config.path), "--job-id", job.job_id, "--user", user,
            "--backend", resource.name, "--lanes", str(lanes),
            "--end-time", str(int(info.end_time or time.time() + 365 * 86400)),
            "--env-file", str(job.env_file), "--ledger-file", str(job.ledger),
            "--summary-file", str(job.summary), *extra]
    if info.account:
        args += ["--account", info.account]
    # Not waiting for readiness here: the proxy's start overlaps the step launch, and the
    # first task's `task-env` waits (bounded) for its env file or reports that it died.
    if config.proxy.spares > 0:
        try:
            claimed = spares.claim(config.state_dir, args, job.proxy_log)
        except OSError:
            log.exception("job %s: claiming a spare proxy failed", job.job_id)
            claimed = None
        if claimed is not None:
            return proxyproc.Recorded(*claimed)
    pid = proxyproc.start(args, job.proxy_log, config.proxy.cgroup).pid
    return proxyproc.Recorded(pid, None, start_ticks(pid))


def keep_spares(config: Config) -> None:
    """After the job's own proxy: start a spare for the next QPU job on this node."""
    try:
        spares.ensure(config.state_dir, config.path, config.proxy.spares, proxyproc.CLEAN_ENV,
                      config.proxy.cgroup)
    except Exception:  # an optimisation only: never fails the prolog
        log.exception("starting a spare proxy failed")


# --------------------------------------------------------------------- multi-node jobs
def this_node(given: str | None = None) -> str:
    """This node's Slurm name: the plugin's --node (SLURMD_NODENAME), else the environment's,
    else the host name (wrong where several slurmd share a host: the plugin passes it)."""
    return given or os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def role_of(info: JobRecord, me: str) -> tuple[str, str]:
    """("single" | "primary" | "relay", the job's first node) for this node."""
    nodes = hostnames(info.nodes)
    if len(nodes) <= 1:
        return "single", me
    first = info.batch_host if info.batch_host in nodes else nodes[0]
    if me == first:
        return "primary", first
    if me in nodes:
        return "relay", first
    raise JobRefused(f"this node's name {me!r} is not among the job's nodes ({info.nodes}); "
                     "ask your admin (the plugin passes SLURMD_NODENAME)")


def qpu_text(resource: Resource, lanes: int) -> str:
    return f"qpu backend={resource.name} lanes={lanes}"


def primary_comment(config: Config, job_id: str, text: str, where: str, run: int) -> str:
    """The AdminComment naming the primary's relay listener (or ``failed``), signed with the
    cluster key over job id, run and ``where`` (qproxy.proxy.relay.auth.sign_primary)."""
    from qproxy.proxy.relay.auth import load_cluster_key, sign_primary
    from qproxy.secrets import SecretsError

    try:
        sig = sign_primary(load_cluster_key(config.cluster_key_file), job_id, run, where)
    except SecretsError as exc:  # the primary could not have started either
        log.warning("job %s: %s", job_id, exc)
        sig = "0"
    return f"{text} primary={where} run={run} sig={sig}"


def publish_primary(config: Config, job: JobState, proxy: proxyproc.Recorded, addr: str,
                    text: str, run: int) -> str:
    """Wait (bounded) for the primary's env file, then publish its relay listener for the
    job's other nodes; ``primary=failed`` if it did not come up. Returns what was published."""
    from qproxy.proxy.relay.auth import RELAY_PORT_ENV, format_hostport

    try:
        env = proxyproc.wait_ready(job.env_file, proxy.pid, job.job_id,
                                   config.proxy.start_timeout_seconds, proxy.spare, proxy.start)
    except OSError:
        env = None
    port = (env or {}).get(RELAY_PORT_ENV, "")
    where = format_hostport(addr, int(port)) if port.isdigit() else "failed"
    if where == "failed":
        log.warning("job %s: the primary proxy published no relay port", job.job_id)
    set_admin_comment(job.job_id, primary_comment(config, job.job_id, text, where, run))
    return where


def admin_comment_of(job_id: str) -> str | None:
    """The job's AdminComment from ``squeue --json`` (a structured record: the job's user
    writes JobName, Comment, WorkDir ... into the same ``scontrol -o`` line, where a forged
    ``AdminComment=...`` or any other ``key=value`` cannot be told from Slurm's own)."""
    return job_info(job_id).admin_comment


def wait_for_primary(config: Config, job_id: str, resource: Resource, run: int,
                     first: str) -> str:
    """The primary's relay listener (ADDR:PORT) once this run's AdminComment names it, signed
    with the cluster key and on the first node's address; a relay never connects elsewhere."""
    from qproxy.proxy.relay.auth import check_primary, load_cluster_key, parse_hostport
    from qproxy.secrets import SecretsError

    try:
        key = load_cluster_key(config.cluster_key_file)
    except SecretsError as exc:
        raise JobRefused(f"this node cannot relay to the job's first node: {exc}; "
                         "ask your admin") from None
    wait = config.proxy.relay_wait_seconds
    deadline = time.monotonic() + wait
    delay = 0.2
    addr: str | None = None
    while True:
        try:
            text = admin_comment_of(job_id)
        except SlurmError as exc:
            log.info("job %s: waiting for the primary: %s", job_id, exc)
            text = None
        c = qpu_comment(text) if text else None
        if c and c.backend == resource.name and c.run == run and c.primary:
            if not check_primary(key, job_id, run, c.primary, c.sig):
                log.warning("job %s: AdminComment names primary=%s without a valid "
                            "signature; ignored", job_id, c.primary[:80])
            elif c.primary == "failed":
                raise JobRefused(f"the QPU proxy on this job's first node ({first}) could not "
                                 "start; see the job's error from that node")
            elif (hp := parse_hostport(c.primary)) is not None:
                if addr is None:
                    addr = node_addr(first)
                if hp[0] != addr:
                    raise JobRefused(f"the published QPU proxy address {c.primary} is not "
                                     f"on this job's first node ({first}, {addr}); ask "
                                     "your admin")
                return c.primary
        if time.monotonic() >= deadline:
            raise JobRefused(f"the QPU proxy on this job's first node ({first}) did not "
                             f"publish its address within {wait:g} s; ask your admin")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


def start_relay(config: Config, job: JobState, resource: Resource, user: str, uid: int,
                lanes: int, info: JobRecord, first: str, me: str) -> int:
    """A relay for this node (no lease: the lanes are the primary's); returns its pid."""
    primary = wait_for_primary(config, job.job_id, resource, info.restart_cnt, first)
    args = ["--relay-to", primary, "--config", str(config.path), "--job-id", job.job_id,
            "--user", user, "--backend", resource.name, "--lanes", str(lanes),
            "--env-file", str(job.env_file), "--summary-file", str(job.summary),
            "--node", me, "--run", str(info.restart_cnt),
            "--audit-log", str(config.audit_dir / f"{audit_stem(job.job_id, me)}.jsonl")]
    pid = proxyproc.start(args, job.proxy_log, config.proxy.cgroup).pid
    start = start_ticks(pid)
    job.write_record(ProxyRecord(
        job_id=job.job_id, user=user, uid=uid, account=info.account, resource=resource.name,
        upstream_backend=resource.backend, lanes=lanes, pid=pid, env_file=str(job.env_file),
        started=time.time(), role="relay", primary=primary, node=me, end_time=info.end_time,
        start_ticks=start))
    return pid


def prolog(config: Config, job_id: str, uid: int, backend: str,
           node: str | None = None) -> int:
    job = JobState.of(config, job_id)
    old = job.read_record()
    previous = proxyproc.recorded(old) if old else None
    if previous:  # requeued job: stop the previous proxy
        proxyproc.stop(previous.pid, job_id, grace=5, spare=previous.spare, start=previous.start)
    job.remove()
    job.create()
    user = _user_name(uid)
    t0 = time.monotonic()
    leased = False
    role = "single"
    published: str | None = None  # a primary's AdminComment text, once it is known
    try:
        info = _job_info(job_id)
        note = het_without_lanes(backend, info)
        if note:
            log.info("job %s: %s", job_id, note)
            job.set_note(note)
            return 0
        resource, lanes = check(config, backend, user, info)
        text = qpu_text(resource, lanes)
        me = this_node(node)
        role, first = role_of(info, me)
        if role == "relay":
            pid = start_relay(config, job, resource, user, uid, lanes, info, first, me)
            log.info("job %s: relay pid %d on %s to the primary on %s started in %.2fs",
                     job_id, pid, me, first, time.monotonic() - t0)
            return 0
        if role == "primary":
            published = text
        acquire_lanes(config, resource, job_id, lanes)
        leased = True
        addr = node_addr(me) if role == "primary" else ""
        extra = (("--relay-listen", addr, "--run", str(info.restart_cnt))
                 if role == "primary" else ())
        proxy = start_proxy(config, job, resource, user, lanes, info, extra)
        pid, spare_id = proxy.pid, proxy.spare
        comment = start_admin_comment(job_id, text) if role == "single" else None
        job.write_record(ProxyRecord(
            job_id=job_id, user=user, uid=uid, account=info.account, resource=resource.name,
            upstream_backend=resource.backend, lanes=lanes, pid=pid, spare=spare_id,
            start_ticks=proxy.start,
            env_file=str(job.env_file), started=time.time(), role=role, end_time=info.end_time))
        if role == "single":
            finish_admin_comment(job_id, comment)
        else:
            where = publish_primary(config, job, proxy, addr, text, info.restart_cnt)
            published = None
            log.info("job %s: primary on %s, relay listener %s", job_id, me, where)
        log.info("job %s: proxy pid %d%s for %s (%d lanes, user %s) started in %.2fs",
                 job_id, pid, f" (spare {spare_id})" if spare_id else "", resource.name, lanes,
                 user, time.monotonic() - t0)
        if spare_id is None:  # none was ready (a spare stays for the next job once started)
            keep_spares(config)
    except JobRefused as exc:
        log.info("job %s: refused: %s", job_id, exc)
        job.set_error(str(exc))
        if leased:
            lease.release(config, job_id)
    except Exception:
        log.exception("job %s: prolog failed", job_id)
        job.set_error("internal error while starting the QPU proxy; ask your admin "
                      f"(see hooks.log on the node, job {job_id})")
        if leased:
            lease.release(config, job_id)
    if published is not None:  # the primary failed: its relays should not wait for it
        set_admin_comment(job_id, primary_comment(config, job_id, published, "failed",
                                                  info.restart_cnt))
    return 0
