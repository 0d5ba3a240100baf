"""`scripts/cluster up|down|status|env|install|exec`: one Settings from argv/env, then the
single- or several-node layout's command."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from scripts.localcluster import daemons, multinode, single
from scripts.localcluster.settings import FLAG_OPTS, VALUE_OPTS, Settings
from scripts.localcluster.system import (
    die,
    ensure_db_packages,
    ensure_packages,
    ensure_qproxy,
    ensure_users,
    log,
    print_env,
)

USAGE = """\
usage: scripts/cluster up|down|status|env|install [--slurm host|bookworm|trixie|sid]
                       [--nodes N] [--accounting|--no-accounting] [--name NAME]
       scripts/cluster exec [same options] [--node qnodeI] [--user U] -- CMD...
  (or QPROXY_CLUSTER_SLURM, _NODES, _ACCOUNTING=1|0, _NAME; exec: several-node layout only)"""


def up(s: Settings) -> int:
    """Bring the cluster up; if that fails, stop what this call started and (when nothing
    ran before) unmount and delete the namespace again, so a failed `up` leaves no trace."""
    t0 = time.monotonic()
    if os.geteuid() != 0:
        die("run as root (it starts slurmd and munged)")
    before = daemons.running(s)
    try:
        return multinode.up(s, t0) if s.multi else single.up(s, t0)
    except BaseException:
        started = {n: p for n, p in daemons.running(s).items() if before.get(n) != p}
        if started:
            log("up failed: stopping " + ", ".join(f"{n}[{p}]" for n, p in started.items()))
        cleanup = multinode.cleanup_failed_up if s.multi else single.cleanup_failed_up
        cleanup(s, started, nothing_before=not before)
        raise


def install(s: Settings) -> int:
    """What `up` installs, without starting anything: the Slurm packages (or the suite's
    chroot), MariaDB + slurmdbd with --accounting, the job users and qproxy. scripts/test
    runs it once before its suites start side by side, so no two of them run apt at once
    (dpkg's lock makes the second apt-get fail)."""
    if os.geteuid() != 0:
        die("run as root (apt-get, useradd)")
    ensure_packages(s)
    if s.accounting:
        ensure_db_packages(s)
    ensure_qproxy(s)
    ensure_users(s)
    return 0


def command_words(argv: list[str]) -> list[str]:
    """ARGV without our options (and without `--` and what follows it)."""
    words = argv[:argv.index("--")] if "--" in argv else list(argv)
    for opt in VALUE_OPTS:
        while opt in words[:-1]:
            i = words.index(opt)
            words = words[:i] + words[i + 2:]
    return [a for a in words if a not in FLAG_OPTS]


def main(argv: list[str]) -> int:
    try:
        s = Settings.from_argv(argv)
    except ValueError as exc:  # e.g. --nodes x, a non-numeric port
        print(f"cluster: {exc}\n{USAGE}", file=sys.stderr)
        return 2
    words = command_words(argv)
    if words[:1] == ["exec"] and s.multi:
        rest = argv[argv.index("--"):] if "--" in argv else []
        return multinode.exec_(s, words[1:] + rest)
    def env() -> int:
        print_env(s)
        return 0

    cmds: dict[str, Callable[[], int]] = {
        "up": lambda: up(s),
        "install": lambda: install(s),
        "down": lambda: multinode.down(s) if s.multi else single.down(s),
        "status": lambda: multinode.status(s) if s.multi else single.status(s),
        "env": env,
    }
    problem = s.problem()
    if len(words) != 1 or words[0] not in cmds or problem:
        print((f"cluster: {problem}\n" if problem else "") + USAGE, file=sys.stderr)
        return 2
    return cmds[words[0]]()
