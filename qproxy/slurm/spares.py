"""The spare-proxy pool as the Slurm hooks use it: the prolog claims a ready spare (or keeps
the pool filled), ``reap --all`` stops them all. The spare process itself:
``qproxy.proxy.spare``; the pool's files and the claim's wire format, which both sides share:
``qproxy.node.sparepool``.

Standard library only: the claim is on every QPU job's start.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from qproxy.node.sparepool import (
    ACK,
    MAX_REQUEST,
    Claimed,
    listing,
    parse_reply,
    request_line,
    spares_dir,
)
from qproxy.slurm.proxyproc import launch

CLAIM_TIMEOUT = 2.0  # a ready spare answers in milliseconds


def claim(state_dir: Path, argv: list[str], log_path: Path,
          timeout: float = CLAIM_TIMEOUT) -> Claimed | None:
    """Hand ``qproxy serve`` arguments to a ready spare: the proxy it forked, or None."""
    request = request_line(argv, log_path)
    for path, _pid, _id in listing(state_dir):
        if not path.name.endswith(".sock"):
            continue
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            s.sendall(request)
            claimed = parse_reply(s.makefile("rb").readline(MAX_REQUEST))
            if claimed is None:
                continue
            # the forked proxy starts only on this: a prolog that gave up before it read the
            # answer (and starts a proxy of its own) never leaves a second one behind
            s.sendall(ACK)
            return claimed
        except OSError:  # claimed by another prolog, or going away
            continue
        finally:
            s.close()
    return None


def ensure(state_dir: Path, config_path: Path, wanted: int, env: dict[str, str],
           cgroup_name: str = "") -> int:
    """Start spares until ``wanted`` are ready or starting, each in the cgroup CGROUP_NAME
    (``[proxy].cgroup``: a spare is started by some job's prolog, but the proxies it forks
    serve other users' jobs, which that job's end or OOM must never take down); returns how
    many were started."""
    if wanted <= 0:
        return 0
    d = spares_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    started = 0
    for _ in range(max(0, wanted - len(listing(state_dir)))):
        spare_id = os.urandom(8).hex()
        proc = launch(["--spare", spare_id, "--config", str(config_path)],
                      d / f"{spare_id}.log", env, _idle_priority, cgroup_name)
        # counted from now on (Popen returns after the exec, so the guard sees the spare's
        # command line); the spare removes this marker once its socket exists
        (d / f"{proc.pid}-{spare_id}.spawned").touch(mode=0o600)
        started += 1
    return started


def _idle_priority() -> None:
    """A spare starts when its node launches a job: it must take only CPU nobody else wants,
    or it slows the very launch it is meant to speed up (measured: task-env 65 -> 160 ms
    on 2 cores with the spare at normal priority)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        try:
            os.nice(19)
        except OSError:
            pass


def stop_all(state_dir: Path) -> int:
    """SIGTERM every spare of this node (node going down, or the code changed); the proxies
    they forked are jobs' and stay (their own sessions, stopped by their epilogs)."""
    n = 0
    for path, pid, spare_id in listing(state_dir):
        try:
            os.kill(pid, signal.SIGTERM)
            n += 1
        except OSError:
            pass
        path.unlink(missing_ok=True)
        (path.parent / f"{spare_id}.log").unlink(missing_ok=True)
    return n
