"""``qproxy status``: what this node's QPU side holds right now -- the live proxies (job,
user, resource, lanes held and in use, upstream jobs queued/running, seconds left, pid/port),
spare proxies, leases per device, each device's upstream status -- and one line for anything
inconsistent with what ``qproxy hook reap`` would do about it (``reap.plan``: the reaper's own
decision, not a second copy of it). Root only: every source is a root-only file under
state_dir (record.json, the proxy's status.json, leases.json) or needs the vendor key.

Exit status: 0, or 1 when a problem is listed (for cron/monitoring), 2 on bad usage."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from dataclasses import asdict, dataclass, field

from qproxy.admin.devices import DeviceStatus
from qproxy.config import Config


@dataclass(frozen=True)
class ProxyView:
    job_id: str
    user: str
    account: str
    resource: str
    role: str  # single, primary, relay
    pid: int
    alive: bool  # the recorded process is this job's qproxy serve
    port: int | None  # from the proxy's status file
    lanes_held: int  # this node's lease (a relay holds none: its primary does)
    lanes_in_use: int | None  # None: the proxy has not reported (relay, old proxy, dead)
    queued: int | None
    running: int | None
    upstream_jobs: int | None  # every upstream job the proxy created
    seconds_left: float | None
    in_slurm: bool | None  # None: Slurm did not answer
    spare: str | None = None
    primary: str = ""


@dataclass(frozen=True)
class Problem:
    job_id: str
    what: str
    reap: str  # what `qproxy hook reap` would do about it now
    pid: int | None = None


@dataclass(frozen=True)
class LeaseView:
    resource: str
    lanes: int  # the resource's lanes on this node (config)
    held: dict[str, int]  # job -> lanes


@dataclass(frozen=True)
class SpareView:
    pid: int
    id: str
    state: str  # ready, starting


@dataclass
class NodeStatus:
    time: float
    config: str
    state_dir: str
    slurm: str  # "ok" or why Slurm could not be asked
    proxies: list[ProxyView] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # job -> the prolog's error line
    spares: list[SpareView] = field(default_factory=list)
    leases: list[LeaseView] = field(default_factory=list)
    devices: list[DeviceStatus] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _reap_says(actions: list[object] | None, job_id: str, pid: int | None = None) -> str:
    from qproxy.slurm.reap import ReapAction

    if actions is None:
        return "nothing now: Slurm did not answer (the reaper never acts on uncertainty)"
    for a in actions:
        assert isinstance(a, ReapAction)
        if a.job_id != job_id or (pid is not None and a.pid not in (None, pid)):
            continue
        if a.kind == "finish":
            return ("tears the job down: stops its proxy, cancels leftover upstream jobs, "
                    "releases its lease, books its usage, removes its state")
        if a.kind == "release":
            return "releases the lease"
        if a.kind == "stop":
            return f"stops pid {a.pid}"
        return f"leaves it: {a.why}"
    return "leaves it: Slurm still runs the job (its epilog tears it down when it ends)"


def gather(config: Config, devices: bool = True, timeout: float = 5.0) -> NodeStatus:
    from qproxy.node.process import alive as process_alive
    from qproxy.node.process import is_our_proxy, serve_processes
    from qproxy.node.sparepool import listing as spare_listing
    from qproxy.slurm import lease
    from qproxy.slurm.reap import GRACE_SECONDS, orphan_proxies, plan
    from qproxy.slurm.state import JobState, job_dirs
    from qproxy.slurmcli.jobs import live_jobs
    from qproxy.slurmcli.record import JobRecord
    from qproxy.slurmcli.run import SlurmError

    now = time.time()
    live: dict[str, JobRecord] | None
    try:
        live = live_jobs()
        slurm = "ok"
    except SlurmError as exc:
        live, slurm = None, str(exc)
    actions: list[object] | None = (list(plan(config, set(live), now))
                                    if live is not None else None)
    st = NodeStatus(time=now, config=str(config.path), state_dir=str(config.state_dir),
                    slurm=slurm)
    held = lease.peek(config)
    lanes_of = {j: n for h in held.values() for j, n in h.items()}
    dirs = job_dirs(config)
    recorded_pids: set[int] = set()
    for job_id in dirs:
        job = JobState.of(config, job_id)
        rec = job.read_record()
        in_slurm = None if live is None else job_id in live
        if rec is None:
            error = job.read_error()
            if error:
                st.refused[job_id] = error
                continue
            try:
                young = job.root.stat().st_mtime > now - GRACE_SECONDS
            except OSError:
                continue
            if not young:
                st.problems.append(Problem(job_id, "state dir without a record",
                                           _reap_says(actions, job_id)))
            continue
        recorded_pids.add(rec.pid)
        alive = is_our_proxy(rec.pid, job_id, rec.spare) and process_alive(rec.pid)
        status = job.read_status() if alive else None
        end = status.end_time if status and status.end_time else (
            live[job_id].end_time if live and job_id in live else 0.0)
        st.proxies.append(ProxyView(
            job_id=job_id, user=rec.user, account=rec.account, resource=rec.resource,
            role=rec.role, pid=rec.pid, alive=alive, port=status.port if status else None,
            lanes_held=lanes_of.get(job_id, 0),
            lanes_in_use=status.lanes_in_use if status else None,
            queued=status.count("Queued") if status else None,
            running=status.count("Running") if status else None,
            upstream_jobs=len(status.jobs) if status else None,
            seconds_left=max(0.0, end - now) if end else None, in_slurm=in_slurm,
            spare=rec.spare, primary=rec.primary))
        if not alive:
            st.problems.append(Problem(job_id, f"record without a process (pid {rec.pid} is "
                                       f"not this job's proxy)", _reap_says(actions, job_id),
                                       rec.pid))
        elif in_slurm is False:
            st.problems.append(Problem(job_id, "proxy of a job Slurm no longer runs",
                                       _reap_says(actions, job_id)))
    for resource, jobs in sorted(held.items()):
        total = config.resources[resource].lanes if resource in config.resources else 0
        st.leases.append(LeaseView(resource, total, dict(sorted(jobs.items()))))
        for job_id in jobs:
            if job_id not in dirs:
                st.problems.append(Problem(job_id, f"lease without a job ({jobs[job_id]} "
                                           f"lane(s) of {resource})",
                                           _reap_says(actions, job_id)))
    for resource, res in sorted(config.resources.items()):
        if resource not in held:
            st.leases.append(LeaseView(resource, res.lanes, {}))
    for pid, job_id in sorted(orphan_proxies(config).items()):
        st.problems.append(Problem(job_id, f"process without a record (pid {pid})",
                                   _reap_says(actions, job_id, pid), pid))
    ready: dict[int, SpareView] = {}
    for path, pid, spare_id in spare_listing(config.state_dir, prune=False):
        state = "ready" if path.name.endswith(".sock") else "starting"
        if ready.get(pid) is None or state == "ready":
            ready[pid] = SpareView(pid, spare_id, state)
    st.spares = sorted(ready.values(), key=lambda s: s.pid)
    mine = str(config.path.resolve())
    for pid, opts in sorted(serve_processes().items()):
        spare = [v for k, v in opts if k == "--spare"]
        configs = {_resolve(v) for k, v in opts if k == "--config"}
        if spare and mine in configs and pid not in ready and pid not in recorded_pids:
            st.problems.append(Problem("", f"claimed spare proxy without a record (pid {pid}, "
                                       f"spare {spare[0]})", "leaves it: the reaper only "
                                       "stops proxies of known jobs; a prolog may be writing "
                                       f"its record right now -- if it persists, kill {pid}",
                                       pid))
    if devices:
        from qproxy.admin.devices import probe

        st.devices = probe(config, timeout)
    return st


def _resolve(path: str) -> str:
    from pathlib import Path

    try:
        return str(Path(path).resolve())
    except OSError:
        return path


# ------------------------------------------------------------------------------ rendering
def _n(v: object) -> str:
    return "-" if v is None else str(v)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    width = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)).rstrip()
            for r in [head, *rows]]


def render(st: NodeStatus) -> str:
    when = datetime.datetime.fromtimestamp(st.time, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    out = [f"qproxy status  {when} UTC  config {st.config}",
           f"Slurm: {'answered' if st.slurm == 'ok' else 'NOT answering: ' + st.slurm}", ""]
    out.append(f"PROXIES ({len(st.proxies)})")
    if st.proxies:
        rows = []
        for p in st.proxies:
            upstream = (f"{p.queued}/{p.running}/{p.upstream_jobs}"
                        if p.upstream_jobs is not None else "-")
            left = _duration(p.seconds_left)
            role = p.role if p.role != "relay" else f"relay->{p.primary}"
            rows.append([p.job_id, p.user, p.account or "-", p.resource, role,
                         f"{p.lanes_held}/{_n(p.lanes_in_use)}", upstream, left,
                         f"{p.pid}{'' if p.alive else ' (dead)'}", _n(p.port)])
        out += ["  " + ln for ln in _table(
            ["job", "user", "account", "resource", "role", "lanes held/in use",
             "upstream queued/running/all", "left", "pid", "port"], rows)]
    for job_id, error in sorted(st.refused.items()):
        out.append(f"  job {job_id}: refused by the prolog: {error}")
    ready = [s for s in st.spares if s.state == "ready"]
    out += ["", f"SPARES: {len(ready)} ready, {len(st.spares) - len(ready)} starting"
            + (f" (pids {', '.join(str(s.pid) for s in st.spares)})" if st.spares else "")]
    out += ["", "LEASES"]
    for lv in st.leases:
        used = sum(lv.held.values())
        jobs = ", ".join(f"job {j} ({n})" for j, n in lv.held.items())
        out.append(f"  {lv.resource}: {used} of {lv.lanes} lane(s) held"
                   + (f": {jobs}" if jobs else ""))
    if st.devices:
        out += ["", "DEVICES"]
        rows = []
        for d in st.devices:
            state = ("online" if d.online else "OFFLINE" if d.reachable else "UNREACHABLE")
            detail = ": ".join(x for x in (d.status if d.reachable else "", d.message) if x)
            rows.append([d.resource, d.backend, f"upstream {d.upstream}", state,
                         detail, f"queue {_n(d.queue)}"])
        out += ["  " + ln for ln in _table(["resource", "device", "via", "state", "detail",
                                            "queue"], rows)]
    out += ["", f"PROBLEMS ({len(st.problems)})"]
    for pr in st.problems:
        who = f"job {pr.job_id}: " if pr.job_id else ""
        out.append(f"  ! {who}{pr.what} -> reap: {pr.reap}")
    if not st.problems:
        out.append("  none")
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    from qproxy.config import DEFAULT_CONFIG_PATH

    p = argparse.ArgumentParser(prog="qproxy status", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG_PATH))
    p.add_argument("--json", action="store_true", help="one JSON document (for scripts)")
    p.add_argument("--no-devices", action="store_true", help="do not ask the upstreams")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="seconds to wait for each device's status (default 5)")
    return p


def main(argv: list[str]) -> int:
    from qproxy.config import ConfigError, load

    args = _parser().parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"qproxy status: {exc}", file=sys.stderr)
        return 2
    import os

    if os.geteuid() != 0 or (config.state_dir.exists()
                             and not os.access(config.state_dir, os.R_OK | os.X_OK)):
        print(f"qproxy status: needs root ({config.state_dir} and the vendor key are root's)",
              file=sys.stderr)
        return 2
    st = gather(config, devices=not args.no_devices, timeout=args.timeout)
    print(json.dumps(asdict(st), indent=1) if args.json else render(st))
    return 1 if st.problems else 0
