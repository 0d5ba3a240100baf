"""`qproxy` command: a thin dispatcher.

Each subcommand lives in its own module and is imported lazily, so `qproxy serve` never pays
for (or pulls in) qiskit, which only the emulator needs.
"""

from __future__ import annotations

import importlib
import os
import sys

# subcommand -> (module, one-line help). Each module exposes `main(argv: list[str]) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "emulator": ("qproxy.emulator.cli", "run the local Qiskit-Runtime-compatible QPU emulator"),
    "serve": ("qproxy.proxy.main", "run one Slurm job's authenticating proxy"),
    "audit": ("qproxy.admin.audit", "inspect and verify per-job audit logs"),
    "secrets": ("qproxy.admin.secrets", "manage the admin's vendor secrets (encrypted at rest)"),
    "doctor": ("qproxy.admin.doctor", "check this node's config, secrets and SPANK plugin build"),
    "status": ("qproxy.admin.status", "this node's proxies, leases, devices and problems"),
    "usage": ("qproxy.admin.usage", "QPU usage per user/account/resource/day (table, CSV, plot)"),
    "metrics": ("qproxy.admin.metrics", "this node's proxies' metrics (Prometheus text format)"),
    "monitor": ("qproxy.slurm.monitor", "hold new QPU jobs in Slurm while their device is down"),
    "hook": ("qproxy.slurm.hookcli", "Slurm hook entry points (prolog, task-env, epilog, reap)"),
}


def _usage() -> str:
    lines = ["usage: qproxy COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"qproxy: unknown command {name!r} (try: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    rc = int(module.main(rest) or 0)
    if getattr(module, "EXIT_AT_ONCE", False) and argv is None:
        # The module has closed and fsync'ed what it wrote; skip the interpreter's teardown
        # of aiohttp & co. (tens of ms that the epilog would wait for).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
