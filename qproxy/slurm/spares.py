"""The spare-proxy pool as the Slurm hooks use it: the prolog claims a ready spare (or keeps
the pool filled), ``reap --all`` stops them all. The spare process itself and how spares are
started and listed: ``qproxy.proxy.spare``.

Standard library only: the claim is on every QPU job's start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

from qproxy.proxy.spare import ACK, MAX_REQUEST, Claimed, ensure, identity, listing

__all__ = ["Claimed", "claim", "ensure", "listing", "stop_all"]

CLAIM_TIMEOUT = 2.0  # a ready spare answers in milliseconds


def claim(state_dir: Path, argv: list[str], log_path: Path,
          timeout: float = CLAIM_TIMEOUT) -> Claimed | None:
    """Hand ``qproxy serve`` arguments to a ready spare: the proxy it forked, or None."""
    request = json.dumps({"identity": identity(), "argv": argv, "log": str(log_path)})
    for path, _pid, _id in listing(state_dir):
        if not path.name.endswith(".sock"):
            continue
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            s.sendall(request.encode() + b"\n")
            reply = s.makefile("rb").readline(MAX_REQUEST)
            try:
                answer = json.loads(reply)
            except ValueError:
                continue
            if not (isinstance(answer, dict) and answer.get("ok")
                    and isinstance(answer.get("pid"), int)
                    and isinstance(answer.get("start"), int)):
                continue
            # the forked proxy starts only on this: a prolog that gave up before it read the
            # answer (and starts a proxy of its own) never leaves a second one behind
            s.sendall(ACK)
            return Claimed(answer["pid"], str(answer["id"]), answer["start"])
        except OSError:  # claimed by another prolog, or going away
            continue
        finally:
            s.close()
    return None


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
