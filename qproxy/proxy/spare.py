"""The spare proxy process: an idle ``qproxy serve --spare`` kept ready on a node, that FORKS
each QPU job's proxy (a "zygote"). How spares are found and the claim's wire format:
``qproxy.node.sparepool``; the hooks' side (start, claim, stop): ``qproxy.slurm.spares``.

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
they are their own sessions). Its files in ``{state_dir}/spares/``: see
``qproxy.node.sparepool``.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys
from typing import Any

from qproxy.files import open_append
from qproxy.node.process import start_ticks
from qproxy.node.sparepool import ACK, identity, read_request, reply, spares_dir

ACK_SECONDS = 2.0  # a prolog acknowledges at once; waiting holds up the next claims


def _normal_priority() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except (OSError, AttributeError):
        pass  # not root: the claimed proxy stays nice


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


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
    from qproxy.proxy.lifecycle import run_loop
    from qproxy.upstream import KINDS

    for target in KINDS.values():  # what connect() imports on the child's first use
        __import__(target.partition(":")[0])
    try:  # what an encrypted secret needs (qproxy.secrets.decode): only the code, no key
        import cryptography.fernet  # noqa: F401
    except ImportError:
        pass
    serve.parse_args(["--config", config_path, "--job-id", "0", "--user", "nobody",
                      "--backend", "-", "--lanes", "1", "--end-time", "0",
                      "--env-file", os.devnull])
    conf = cfg.load(config_path)
    if any(isinstance(up, cfg.QuantumSystemSettings) for up in conf.upstreams.values()):
        # the S3 signing code a job's first submission to an on-prem system imports (~36 ms)
        import botocore.auth  # noqa: F401
        import botocore.awsrequest  # noqa: F401
        import botocore.credentials  # noqa: F401
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

    run_loop(once())


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
            reply(conn, ok=True, pid=pid, id=spare_id, start=start_ticks(pid))
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
        fd = open_append(request["log"])
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
    from qproxy.node.codestamp import Snapshot

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
        _warm(config_path)  # at idle priority (see qproxy.slurm.spares.ensure)
        loaded = Snapshot()  # every module file it forks from, as it is now
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
                request = read_request(conn)
                if _peer_uid(conn) != os.getuid() or request is None:
                    reply(conn, ok=False, error="bad request")
                    continue
                if request["identity"] != mine:
                    reply(conn, ok=False, error="stale spare (qproxy changed since it started)")
                    return 0
                if (stale := loaded.changed()) is not None:  # e.g. a security update
                    print(f"qproxy serve: spare: stale: {stale}", file=sys.stderr)
                    reply(conn, ok=False, error=f"stale spare ({stale})")
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
