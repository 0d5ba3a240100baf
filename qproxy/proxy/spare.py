"""The spare proxy process: an idle ``qproxy serve --spare`` kept ready on a node, that FORKS
each QPU job's proxy (a "zygote"); how spares are started and found (the hooks' side of the
pool, claiming and stopping, is ``qproxy.slurm.spares``).

Why: a job's proxy spends ~200 ms starting Python and importing aiohttp before it serves, and
a process of its own costs ~27 MB of private memory (USS), most of it the imported modules'
code and data. The spare has imported and warmed all of it once, ``gc.freeze()``s it and
forks: each job's proxy shares those pages copy-on-write (measured: ~27 -> ~8 MB USS per
proxy, see bench section 5) and serves within milliseconds. Each job still has its own
process (crash containment, its own port, token, secret and audit log).

What the spare holds is nothing job-specific: no secret, no token, no port, no audit log,
no socket but its own claim socket; the fork happens BEFORE the child reads anything of its
job, and the child closes every inherited descriptor but stdio (redirected to its job's
log). The prolog claims over a root-only Unix socket and hands the arguments it would have
started a proxy with; the spare forks and answers, and once the prolog acknowledges the
answer the child runs the normal start (``qproxy.proxy.serve.main``; unacknowledged, it is
killed: that prolog starts a proxy of its own).
Without a spare the prolog starts a proxy as before, so a spare is purely an optimisation
and every failure here falls back to that.

A forked proxy's command line is its spare's (``serve --spare ID``): the hooks' PID-reuse
guard therefore also checks the start time the spare reports (``/proc/PID/stat``), which
the prolog keeps in the job's record. A spare only answers a prolog running the same qproxy
code (``identity()``; a stale one exits), exits after ``[proxy].spare_idle_seconds``
without a claim, and is stopped by ``qproxy hook reap --all`` (its jobs' proxies are not:
they are their own sessions). Files in ``{state_dir}/spares/``: ``<pid>-<id>.spawned``
(started), ``.starting`` (its socket while it imports), ``.sock`` (ready), ``<id>.log``
(its own output).

The claim side (prolog) uses the standard library only: it is on every QPU job's start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any, NamedTuple

from qproxy.proxy.process import alive, serve_options, start_ticks

MAX_REQUEST = 64 * 1024
ACK = b"ok\n"  # the prolog's answer to a claim's reply: the forked proxy may start
ACK_SECONDS = 2.0  # a prolog acknowledges at once; waiting holds up the next claims


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


class Claimed(NamedTuple):
    """What a claim answers: the job's forked proxy, recognisable by the hooks' PID-reuse
    guard through its spare's id (its command line) and its start time."""

    pid: int
    spare: str
    start: int


def _warm(config_path: str) -> None:
    """Run, once, the code every job's proxy runs at start (argument parsing, config, an
    event loop, an aiohttp server and client answering one request on loopback), so that
    Python's adaptive interpreter has specialised it and its caches (re, imports) are
    filled before the fork: a child then writes to far fewer shared pages. Nothing of a
    job: no secret, no token, and every socket is closed again."""
    import asyncio

    from aiohttp import ClientSession, web

    import qproxy.proxy.app  # noqa: F401
    from qproxy import config as cfg
    from qproxy.proxy import serve
    from qproxy.proxy.upstream import KINDS

    for target in KINDS.values():  # what connect() imports on the child's first use
        __import__(target.partition(":")[0])
    try:  # what an encrypted secret needs (qproxy.secrets.decode): only the code, no key
        import cryptography.fernet  # noqa: F401
    except ImportError:
        pass
    serve.parse_args(["--config", config_path, "--job-id", "0", "--user", "nobody",
                      "--backend", "-", "--lanes", "1", "--end-time", "0",
                      "--env-file", os.devnull])
    cfg.load(config_path)
    serve.job_uid("root")

    async def ok(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def once() -> None:
        app = web.Application()
        app.router.add_get("/", ok)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        assert runner.server is not None
        sock = serve.listen(cfg.ProxySettings(host="127.0.0.1"), 0)  # warm-up only
        server = await asyncio.get_running_loop().create_server(runner.server, sock=sock)
        try:
            port = sock.getsockname()[1]
            async with ClientSession() as client, client.get(f"http://127.0.0.1:{port}/") as r:
                await r.json()
        finally:
            server.close()
            await runner.cleanup()

    serve.run_loop(once())


def _fork_proxy(listener: socket.socket, conn: socket.socket, request: dict[str, Any],
                spare_id: str) -> None:
    """Fork the job's proxy, answer the claim, and let the child start only once the prolog
    has acknowledged the answer (else kill it: that prolog starts a proxy of its own). The
    child never returns."""
    import threading

    if threading.active_count() != 1:  # a fork copies no other thread: refuse, never hang
        raise OSError("spare has threads; not forking")
    sys.stdout.flush()
    sys.stderr.flush()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(go_r)
        try:
            _reply(conn, ok=True, pid=pid, id=spare_id, start=start_ticks(pid))
            conn.settimeout(ACK_SECONDS)
            acked = conn.recv(len(ACK)) == ACK
        except OSError:
            acked = False
        try:
            if acked:
                os.write(go_w, b"1")
            else:
                os.kill(pid, signal.SIGKILL)
        finally:
            os.close(go_w)
        return
    rc = 1
    try:
        listener.close()
        conn.close()
        os.close(go_w)
        go = os.read(go_r, 1)
        os.close(go_r)
        if go != b"1":
            rc = 0
            return
        os.setsid()  # its own session, like a proxy the prolog starts: outlives the spare
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # nothing of the spare's but stdio
        _normal_priority()
        from qproxy.proxy.serve import main

        rc = main(request["argv"])
    except BaseException:  # noqa: BLE001 - the child must never return into the spare
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc)
    raise AssertionError("unreachable")


def serve_spare(spare_id: str, config_path: str) -> int:
    """Run as ``qproxy serve --spare ID --config PATH``: fork a proxy per claim until idle
    for ``spare_idle_seconds``, stopped, or claimed by other code; returns 0 then."""
    import gc

    from qproxy import config as cfg

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
        sock.listen(16)
        _warm(config_path)  # at idle priority (see ensure)
        gc.collect()
        gc.freeze()  # the collector never touches (so never copies) the shared objects
        _normal_priority()
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the forked proxies
        os.rename(starting, ready)
        sock.settimeout(conf.proxy.spare_idle_seconds)
        while True:
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                return 0
            with conn:
                request = _read_request(conn)
                if _peer_uid(conn) != os.getuid() or request is None:
                    _reply(conn, ok=False, error="bad request")
                    continue
                if request["identity"] != mine:
                    _reply(conn, ok=False, error="stale spare (qproxy changed since it started)")
                    return 0
                _fork_proxy(sock, conn, request, spare_id)
    except OSError as exc:
        print(f"qproxy serve: spare: {exc}", file=sys.stderr)
        rc = 1
        return rc
    finally:
        sock.close()
        (d / f"{os.getpid()}-{spare_id}.spawned").unlink(missing_ok=True)
        starting.unlink(missing_ok=True)
        ready.unlink(missing_ok=True)
        if rc == 0:
            (d / f"{spare_id}.log").unlink(missing_ok=True)
