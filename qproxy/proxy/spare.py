"""The spare proxy process: an idle ``qproxy serve --spare`` kept ready on a node for the next
QPU job, and how spares are started and found (the hooks' side of the pool, claiming one and
stopping them all, is ``qproxy.slurm.spares``).

Why: a job's proxy spends ~200 ms starting Python and importing aiohttp before it serves.
In slurm mode (one Slurm job per primitive call) that time sits between two calls on the
QPU lane. A spare has done all of it and holds nothing job-specific: no secret, no token,
no port, no audit log. The prolog claims it over a root-only Unix socket and hands it the
arguments it would have started a proxy with; the spare then runs the normal start
(``qproxy.proxy.serve.main``: validate, read the secret, bind, env file, audit) with the imports
already done. Without a spare the prolog starts a proxy as before, so a spare is purely an
optimisation and every failure here falls back to that.

One claim per spare: the spare unlinks its socket as soon as it accepts a connection, so
two prologs never get the same process. A spare only answers a prolog running the same
qproxy code (``identity()``), exits after ``[proxy].spare_idle_seconds``, and is stopped by
``qproxy hook reap --all``. Files in ``{state_dir}/spares/``: ``<pid>-<id>.spawned`` (started),
``.starting`` (its socket while it imports), ``.sock`` (ready), ``<id>.log`` (its output until
claimed).

The claim side (prolog) uses the standard library only: it is on every QPU job's start.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
from pathlib import Path
from typing import Any

from qproxy.proxy.process import alive, serve_options

MAX_REQUEST = 64 * 1024


def spares_dir(state_dir: Path) -> Path:
    return state_dir / "spares"


def identity() -> str:
    """The code a spare runs: interpreter, package location, version and the newest source
    mtime (an upgraded or edited install must not be served by an old spare)."""
    import qproxy

    pkg = Path(qproxy.__file__).parent
    newest = 0
    for root, _dirs, files in os.walk(pkg):
        for name in files:
            if name.endswith(".py"):
                try:
                    newest = max(newest, os.stat(os.path.join(root, name)).st_mtime_ns)
                except OSError:
                    continue
    return f"{sys.executable}|{pkg}|{qproxy.__version__}|{newest}"


def _parse_name(name: str) -> tuple[int, str] | None:
    stem, dot, suffix = name.partition(".")
    pid, dash, spare_id = stem.partition("-")
    if not (dot and dash and pid.isdigit() and spare_id.isalnum()):
        return None
    if suffix not in ("sock", "starting", "spawned"):
        return None
    return int(pid), spare_id


def is_spare(pid: int, spare_id: str) -> bool:
    """PID-reuse guard: the process must be ``qproxy serve --spare <spare_id>``."""
    return ("--spare", spare_id) in serve_options(pid)


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


def ensure(state_dir: Path, config_path: Path, wanted: int, env: dict[str, str]) -> int:
    """Start spares until ``wanted`` are ready or starting; returns how many were started."""
    if wanted <= 0:
        return 0
    import subprocess

    d = spares_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    started = 0
    for _ in range(max(0, wanted - len(listing(state_dir)))):
        spare_id = os.urandom(8).hex()
        fd = os.open(d / f"{spare_id}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "qproxy", "serve", "--spare", spare_id,
                 "--config", str(config_path)],
                stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, close_fds=True,
                start_new_session=True, cwd="/", env=env, preexec_fn=_idle_priority,
            )
        finally:
            os.close(fd)
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


def _normal_priority() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except (OSError, AttributeError):
        pass  # not root: the claimed proxy stays nice


def _successor(conf: Any) -> None:
    """A claimed spare starts the next one, so no hook pays for the spawn (the prolog
    only does when it found none). Its environment is already the hooks' clean one."""
    try:
        ensure(conf.state_dir, conf.path, conf.proxy.spares, dict(os.environ))
    except Exception as exc:  # noqa: BLE001 - an optimisation only
        print(f"qproxy serve: starting a spare proxy failed: {exc}", file=sys.stderr)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def _read_request(conn: socket.socket) -> dict[str, Any] | None:
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


def _reply(conn: socket.socket, **fields: Any) -> None:
    try:
        conn.sendall(json.dumps(fields).encode() + b"\n")
    except OSError:
        pass


def serve_spare(spare_id: str, config_path: str) -> int:
    """Run as ``qproxy serve --spare ID --config PATH``; returns the claimed proxy's exit code
    (or 0 when it was never claimed)."""
    from qproxy import config as cfg
    from qproxy.proxy.serve import main

    if not spare_id.isalnum():
        print(f"qproxy serve: bad spare id {spare_id!r}", file=sys.stderr)
        return 2
    try:
        conf = cfg.load(config_path)
    except cfg.ConfigError as exc:
        print(f"qproxy serve: {exc}", file=sys.stderr)
        return 1
    mine = identity()
    d = spares_dir(conf.state_dir)
    rc = 0
    starting = d / f"{os.getpid()}-{spare_id}.starting"
    ready = d / f"{os.getpid()}-{spare_id}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(starting))
        os.chmod(starting, 0o600)
        (d / f"{os.getpid()}-{spare_id}.spawned").unlink(missing_ok=True)
        sock.listen(4)
        # what a job's proxy imports at start (see serve.main), at idle priority
        import asyncio  # noqa: F401

        import aiohttp.web  # noqa: F401
        import structlog  # noqa: F401

        import qproxy.proxy.app  # noqa: F401

        _normal_priority()
        os.rename(starting, ready)
        sock.settimeout(conf.proxy.spare_idle_seconds)
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            return 0
        ready.unlink(missing_ok=True)  # nobody else can claim this process now
        sock.close()
        with conn:
            request = _read_request(conn)
            if _peer_uid(conn) != os.getuid() or request is None:
                _reply(conn, ok=False, error="bad request")
                rc = 1
                return rc
            if request["identity"] != mine:
                _reply(conn, ok=False, error="stale spare (qproxy changed since it started)")
                return 0
            fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
            (d / f"{spare_id}.log").unlink(missing_ok=True)
            _reply(conn, ok=True, pid=os.getpid(), id=spare_id)
        return main(request["argv"], after_start=lambda: _successor(conf))
    except OSError as exc:
        print(f"qproxy serve: spare: {exc}", file=sys.stderr)
        rc = 1
        return rc
    finally:
        sock.close()
        if rc == 0:  # unclaimed and nothing to report (a claimed spare's log is gone already)
            (d / f"{spare_id}.log").unlink(missing_ok=True)
        (d / f"{os.getpid()}-{spare_id}.spawned").unlink(missing_ok=True)
        starting.unlink(missing_ok=True)
        ready.unlink(missing_ok=True)
