"""``qproxy emulator``: run the local Qiskit-Runtime-compatible QPU emulator."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import sys
import tempfile

from aiohttp import web

from .backends import DEFAULT_BACKENDS, Device, parse_backends, parse_lanes

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8290
API_KEY_ENV = "QPROXY_EMULATOR_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qproxy emulator",
        description="Serve fake IBM devices over the Qiskit Runtime REST API (qiskit-aer).",
    )
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    p.add_argument(
        "--backends",
        default=",".join(DEFAULT_BACKENDS),
        help="comma-separated fake devices; NAME=FAKE serves FAKE under NAME",
    )
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible runs")
    p.add_argument("--lanes", default=None, help="N for every backend, or NAME=N,NAME=N")
    p.add_argument("--api-key-file", default=None,
                   help="accepted API keys, one per line (mode 0600; created with a random "
                   "key if it does not exist)")
    p.add_argument("--ready-file", default=None, help="write {url, port, pid} here when ready")
    p.add_argument(
        "--min-job-seconds",
        type=float,
        default=0.3,
        help="every job stays Running at least this long (real jobs never finish instantly)",
    )
    p.add_argument(
        "--qpu-time",
        action="store_true",
        help="keep each job Running as long as the device would take for its shots "
        "(shots x repetition delay: ~1 s for 4096 shots), so client-side timeouts see "
        "running jobs as on the real service",
    )
    p.add_argument(
        "--diagnostics",
        action="store_true",
        help="also serve the 'qproxy-blob' program (sized results, for benchmarks)",
    )
    p.add_argument(
        "--api",
        choices=("runtime", "quantum-system", "both"),
        default="runtime",
        help="which API to serve: IBM's Qiskit Runtime API (/api/v1), its on-prem Quantum "
        "System API (/v1, jobs' data through presigned S3 URLs), or both on one set of lanes",
    )
    p.add_argument("--token-ttl", type=int, default=3600, help="IAM access token lifetime (s)")
    p.add_argument("--log-level", default="INFO")
    return p


def _create_key_file(path: str) -> None:
    """A new key file with one random key, 0600, never overwriting (O_EXCL)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"emu-{secrets.token_urlsafe(32)}\n")
    print(f"qproxy emulator: created {path} with a random API key (mode 0600)",
          file=sys.stderr)


def load_api_keys(path: str | None) -> list[str]:
    """--api-key-file lines (the file is created with a random key if missing), else
    $QPROXY_EMULATOR_API_KEY; no key at all is refused. There is no default key: a published
    one is a key every local user knows, and whoever knows it can run work on the centre's
    account (or, the other way round, bind the port and collect the proxies' key)."""
    if path:
        if not os.path.exists(path):
            _create_key_file(path)
        st = os.stat(path)
        if st.st_mode & 0o077:
            raise ValueError(f"{path} is accessible by group/others (chmod 600 {path})")
        with open(path) as fh:
            keys = [line.strip() for line in fh if line.strip() and not line.startswith("#")]
        if not keys:
            raise ValueError(f"{path}: no API keys in file")
        return keys
    if os.environ.get(API_KEY_ENV):
        return [os.environ[API_KEY_ENV]]
    raise ValueError(f"no API key: give --api-key-file FILE (created with a random key, mode "
                     f"0600, if it does not exist) or set ${API_KEY_ENV}")


def write_ready_file(path: str, host: str, port: int) -> None:
    """Atomically publish where we listen (tests and scripts poll for this file)."""
    shown = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    doc = {"url": f"http://{shown}:{port}", "port": port, "pid": os.getpid()}
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ready-")
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)
    os.replace(tmp, path)


async def _serve(args: argparse.Namespace, devices: dict[str, Device], keys: list[str]) -> None:
    from .app import create_app

    app = create_app(
        devices,
        keys,
        seed=args.seed,
        min_job_seconds=args.min_job_seconds,
        qpu_time=args.qpu_time,
        token_ttl=args.token_ttl,
        apis=("runtime", "quantum-system") if args.api == "both" else (args.api,),
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    port = sockets[0].getsockname()[1] if sockets else args.port
    logging.getLogger("qproxy.emulator").info(
        "listening on http://%s:%d (API: %s; backends: %s)",
        args.host,
        port,
        args.api,
        ", ".join(f"{d.name}[{d.lanes} lane(s)]" for d in devices.values()),
    )
    if args.ready_file:
        write_ready_file(args.ready_file, args.host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str]) -> int:
    if argv[:1] == ["device"]:  # the admin client: take a device offline and back
        from .admin import main as device_main

        return device_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("qproxy").setLevel(args.log_level.upper())
    try:
        pairs = parse_backends(args.backends)
        lanes = parse_lanes(args.lanes, [name for name, _ in pairs])
        devices = {name: Device(name, fake, lanes=lanes[name]) for name, fake in pairs}
        keys = load_api_keys(args.api_key_file)
    except (ValueError, OSError) as exc:
        print(f"qproxy emulator: {exc}", file=sys.stderr)
        return 2
    if args.diagnostics:
        from .programs import enable_diagnostics

        enable_diagnostics()
    asyncio.run(_serve(args, devices, keys))
    return 0
