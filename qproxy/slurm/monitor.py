"""`qproxy monitor`: device health in the scheduler (run as root, as a service, on the
controller).

Every ``--interval`` seconds it asks each resource's upstream for its device's status
(through the upstream seam, qproxy/upstream/, with the admin's credential from the
secrets file: it never leaves this process and is never logged). While a device is offline,
paused or unreachable (``--confirm`` polls in a row, so one lost answer blocks nobody) the
device's Slurm licences are held in a reservation named ``qpu_down_<resource>``: new jobs
asking for them (``-L ibm_fez:N``) stay PENDING with ``Reason=Licenses``, and the monitor writes
why into each such pending job's AdminComment (``scontrol show job`` shows it to the user).
Once the device answers online, the reservation is deleted, the notes are cleared and the
jobs start. Running jobs are not touched: a licence-only reservation can be created over
licences in use, and their jobs go on (checked on Slurm 22.05.8).

Why a reservation, not a lowered licence count: the count of a local licence (``Licenses=``
in slurm.conf) cannot be changed without editing slurm.conf and reconfiguring, and remote
licences (``sacctmgr add resource``) need slurmdbd; a reservation needs neither and is
Slurm's own state, so it survives a restart of the monitor or slurmctld and the monitor only
reconciles it with what the device says. Resources mapped to a node GRES (``--gres=qpu:N``)
are not held: Slurm does not know which device such a pending job wants (``--q_backend`` is a
SPANK option, invisible to slurmctld); the monitor says so once at start.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from dataclasses import dataclass

from qproxy import config as cfg
from qproxy.secrets import SecretsError
from qproxy.slurmcli.admincomment import set_admin_comment
from qproxy.slurmcli.cluster import licence_total
from qproxy.slurmcli.jobs import pending_jobs
from qproxy.slurmcli.reservations import (
    create_licence_reservation,
    delete_reservation,
    reservations,
)
from qproxy.slurmcli.run import SlurmError

log = logging.getLogger("qproxy.monitor")
PREFIX = "qpu_down_"
NOTE_TAIL = "(qproxy monitor)"


def reservation_name(resource: str) -> str:
    return PREFIX + resource


@dataclass
class Health:
    """What the monitor last heard from one resource's device."""

    resource: str
    online: bool = True
    reason: str = ""
    down_polls: int = 0
    since: float = 0.0

    def note(self) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.since))
        return (f"qpu: device of {self.resource} unavailable since {when} ({self.reason}); "
                f"job held until it is back {NOTE_TAIL}")


async def device_health(conf: cfg.Config, names: list[str],
                        timeout: float) -> dict[str, tuple[bool, str]]:
    """resource -> (online, why) for each named resource, asked concurrently."""
    from qproxy.upstream import open_upstream
    from qproxy.upstream.base import UpstreamError

    clients = {}
    out: dict[str, tuple[bool, str]] = {}
    for name in names:
        res = conf.resource(name)
        up = conf.upstream_for(res)
        if up.name not in clients:
            try:
                clients[up.name] = open_upstream(conf, res)
            except SecretsError as exc:
                out[name] = (False, f"no credential: {exc}")

    async def one(name: str) -> None:
        res = conf.resource(name)
        client = clients.get(conf.upstream_for(res).name)
        if client is None:
            return
        try:
            st = await asyncio.wait_for(client.device_status(res.backend), timeout)
        except (UpstreamError, TimeoutError) as exc:
            out[name] = (False, f"unreachable: {exc or type(exc).__name__}")
            return
        why = st.status + (f": {st.message}" if st.message else "")
        if st.locked:  # an on-prem system's reservation: our jobs cannot run meanwhile
            why = "reserved for others" + (f" ({why})" if why else "")
        out[name] = (st.online and not st.locked, why[:160])

    try:
        await asyncio.gather(*(one(n) for n in names))
    finally:
        for client in clients.values():
            await client.close()
    return out


def _epoch(stamp: str) -> float:
    """A reservation's StartTime (local time, as scontrol prints it) -> epoch seconds."""
    try:
        return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return 0.0


class Monitor:
    def __init__(self, conf: cfg.Config, names: list[str], confirm: int) -> None:
        self.conf = conf
        self.names = names
        self.confirm = confirm
        self.health = {n: Health(n) for n in names}
        self.licences: dict[str, int] = {}
        for name in names:
            total = licence_total(name)
            if total:
                self.licences[name] = total
            else:
                log.warning("monitor: %s is not a Slurm licence on this cluster: its pending "
                            "jobs cannot be held (only -L licences are; GRES jobs are not)",
                            name)
        held = reservations()  # a restarted monitor keeps holding until told back
        for name, h in self.health.items():
            fields = held.get(reservation_name(name))
            if fields is not None:
                h.online, h.down_polls, h.reason = False, confirm, "held before"
                h.since = _epoch(fields.get("StartTime", "")) or time.time()

    def observe(self, name: str, online: bool, reason: str, now: float) -> None:
        h = self.health[name]
        if online:
            if not h.online or h.down_polls:
                log.info("monitor: %s device is back (%s)", name, reason)
            h.online, h.down_polls, h.reason = True, 0, reason
            return
        h.down_polls += 1
        if h.down_polls == 1:
            h.since = now
        h.reason = reason
        if h.online and h.down_polls >= self.confirm:
            log.warning("monitor: %s device unavailable: %s", name, reason)
            h.online = False

    def reconcile(self) -> None:
        """Make Slurm's reservations and job notes match what the devices said."""
        held = {n for n in reservations() if n.startswith(PREFIX)}
        pending = pending_jobs()
        for name, total in self.licences.items():
            h = self.health[name]
            rname = reservation_name(name)
            if not h.online and rname not in held:
                create_licence_reservation(rname, {name: total})
                log.warning("monitor: reservation %s holds %s:%d; new jobs wait", rname,
                            name, total)
            elif h.online and rname in held:
                delete_reservation(rname)
                log.info("monitor: reservation %s deleted; %s jobs may start", rname, name)
            for job in pending:
                if name not in job.licenses:
                    continue
                noted = job.admin_comment.endswith(NOTE_TAIL)
                if not h.online and job.admin_comment != h.note():
                    set_admin_comment(job.job_id, h.note())
                elif h.online and noted:
                    set_admin_comment(job.job_id, "")

    def table(self) -> str:
        lines = [f"{'RESOURCE':14} {'DEVICE':8} {'SLURM':28} WHY"]
        for name, h in self.health.items():
            if name not in self.licences:
                slurm = "(not a licence: not held)"
            else:
                slurm = f"held: {reservation_name(name)}" if not h.online else "open"
            lines.append(f"{name:14} {'online' if h.online else 'DOWN':8} {slurm:28} "
                         f"{h.reason}")
        return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="qproxy monitor", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(cfg.DEFAULT_CONFIG_PATH))
    p.add_argument("--interval", type=float, default=30.0, help="seconds between polls")
    p.add_argument("--confirm", type=int, default=2,
                   help="polls in a row a device must be down before its jobs are held")
    p.add_argument("--timeout", type=float, default=20.0, help="per status request (seconds)")
    p.add_argument("--resources", help="comma-separated resources (default: all)")
    p.add_argument("--once", action="store_true",
                   help="poll, reconcile and print the table once (with --confirm 1: act now)")
    args = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(message)s")
    try:
        conf = cfg.load(args.config)
        names = args.resources.split(",") if args.resources else sorted(conf.resources)
        for n in names:
            conf.resource(n)
    except cfg.ConfigError as exc:
        print(f"qproxy monitor: {exc}", file=sys.stderr)
        return 2
    if args.interval <= 0 or args.confirm < 1:
        print("qproxy monitor: --interval must be > 0 and --confirm >= 1", file=sys.stderr)
        return 2
    try:
        mon = Monitor(conf, names, args.confirm)
    except SlurmError as exc:
        print(f"qproxy monitor: {exc}", file=sys.stderr)
        return 1
    log.info("monitor: watching %s every %g s", ", ".join(names), args.interval)
    while True:
        started = time.monotonic()
        for name, (online, why) in asyncio.run(
                device_health(conf, names, args.timeout)).items():
            mon.observe(name, online, why, time.time())
        try:
            mon.reconcile()
        except SlurmError as exc:  # slurmctld busy or restarting: try again next poll
            log.warning("monitor: %s", exc)
            if args.once:
                return 1
        if args.once:
            print(mon.table())
            return 0
        time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
