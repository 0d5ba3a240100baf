"""The spare-proxy pool on a node, as both sides see it: where spares are listed, which code
they run, and the claim protocol between a prolog (``qproxy.slurm.spares.claim``) and a spare
(``qproxy.proxy.spare``).

Files in ``{state_dir}/spares/``: ``<pid>-<id>.spawned`` (started), ``.starting`` (its socket
while it imports), ``.sock`` (ready), ``<id>.log`` (its own output).

The claim, over a root-only Unix socket: the prolog sends one JSON line ``{"identity",
"argv", "log"}`` (the arguments it would have started a proxy with); the spare forks and
answers one JSON line ``{"ok": true, "pid", "id", "start"}`` (or ``{"ok": false, "error"}``);
the prolog acknowledges with ``ACK``, and only then does the forked proxy start. A spare only
answers a prolog running the same qproxy code (``identity()``).

Standard library only: the claim is on every QPU job's start.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, NamedTuple

from qproxy.node.process import alive, is_spare

MAX_REQUEST = 64 * 1024
ACK = b"ok\n"  # the prolog's answer to a claim's reply: the forked proxy may start


def spares_dir(state_dir: Path) -> Path:
    return state_dir / "spares"


def identity() -> str:
    """The code a spare runs: interpreter (qproxy.node.codestamp), package location, version and
    the newest source mtime (an upgraded or edited install must not be served by an old
    spare; the third-party code it loaded is checked by the spare itself at each claim)."""
    import qproxy
    from qproxy.node.codestamp import interpreter

    pkg = Path(qproxy.__file__).parent
    newest = 0
    for root, _dirs, files in os.walk(pkg):
        for name in files:
            if name.endswith(".py"):
                try:
                    newest = max(newest, os.stat(os.path.join(root, name)).st_mtime_ns)
                except OSError:
                    continue
    return f"{sys.executable}|{pkg}|{qproxy.__version__}|{newest}|{interpreter()}"


def _parse_name(name: str) -> tuple[int, str] | None:
    stem, dot, suffix = name.partition(".")
    pid, dash, spare_id = stem.partition("-")
    if not (dot and dash and pid.isdigit() and spare_id.isalnum()):
        return None
    if suffix not in ("sock", "starting", "spawned"):
        return None
    return int(pid), spare_id


def listing(state_dir: Path, prune: bool = True) -> list[tuple[Path, int, str]]:
    """(socket path, pid, id) of the spares on this node; files of dead ones are removed
    (unless ``prune`` is False: ``qproxy status`` only looks)."""
    d = spares_dir(state_dir)
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return []
    found = []
    for name in names:
        parsed = _parse_name(name)
        if parsed is None:
            continue
        pid, spare_id = parsed
        path = d / name
        if alive(pid) and is_spare(pid, spare_id):
            found.append((path, pid, spare_id))
        elif prune:
            path.unlink(missing_ok=True)
            (d / f"{spare_id}.log").unlink(missing_ok=True)
    return found


class Claimed(NamedTuple):
    """What a claim answers: the job's forked proxy, recognisable by the hooks' PID-reuse
    guard through its spare's id (its command line) and its start time."""

    pid: int
    spare: str
    start: int


# --- the claim's wire format: the prolog's side ---------------------------------------------
def request_line(argv: list[str], log_path: Path) -> bytes:
    return json.dumps({"identity": identity(), "argv": argv, "log": str(log_path)}).encode() + b"\n"


def parse_reply(reply: bytes) -> Claimed | None:
    """The forked proxy a spare's reply names, or None (refused, or not a reply)."""
    try:
        answer = json.loads(reply)
    except ValueError:
        return None
    if not (isinstance(answer, dict) and answer.get("ok")
            and isinstance(answer.get("pid"), int)
            and isinstance(answer.get("start"), int)):
        return None
    return Claimed(answer["pid"], str(answer["id"]), answer["start"])


# --- the spare's side -------------------------------------------------------------------------
def read_request(conn: socket.socket) -> dict[str, Any] | None:
    conn.settimeout(5.0)
    try:
        line = conn.makefile("rb").readline(MAX_REQUEST)
        data = json.loads(line)
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and isinstance(data.get("argv"), list)
            and all(isinstance(a, str) for a in data["argv"])
            and isinstance(data.get("log"), str) and isinstance(data.get("identity"), str)):
        return None
    return data


def reply(conn: socket.socket, **fields: Any) -> None:
    try:
        conn.sendall(json.dumps(fields).encode() + b"\n")
    except OSError:
        pass
