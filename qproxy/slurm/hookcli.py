"""``qproxy hook prolog|task-env|epilog|reap``: entry points for the SPANK plugin and cron.

Exit codes: prolog/epilog exit 0 unless they could not even read the config (the plugin
ignores the code either way: failing there would drain the node); task-env exits 1 with the
user-facing reason on stdout; reap exits 1 when Slurm could not be asked."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict

from qproxy.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load
from qproxy.slurm.state import log, setup_logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qproxy hook", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("prolog", "task-env", "epilog", "reap"):
        s = sub.add_parser(name)
        s.add_argument("--config", default=str(DEFAULT_CONFIG_PATH))
        if name != "reap":
            s.add_argument("--job-id", required=True)
        if name == "prolog":
            s.add_argument("--uid", type=int, required=True)
            s.add_argument("--backend", required=True)
            s.add_argument("--node", help="this node's Slurm name (SLURMD_NODENAME)")
        if name == "reap":
            s.add_argument("--all", action="store_true",
                           help="tear down every job's state (the node is going down)")
    return p


def _since_exec_ms() -> float:
    """Milliseconds since this process started (/proc start time, 10 ms ticks): the hooks'
    own cost includes the interpreter's start and imports, which is most of it."""
    from qproxy.node.process import start_ticks

    ticks = start_ticks(os.getpid())
    if ticks is None:
        return 0.0
    return (time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")) * 1000


def _prolog_epilog(args: argparse.Namespace, config: Config) -> int:
    if args.cmd == "prolog":
        from qproxy.slurm.prolog import prolog

        return prolog(config, args.job_id, args.uid, args.backend, args.node)
    from qproxy.slurm.epilog import finish

    try:
        finish(config, args.job_id, "epilog")
    except Exception:
        log.exception("job %s: epilog failed", args.job_id)
    return 0


def main(argv: list[str]) -> int:
    entered = _since_exec_ms()
    args = _parser().parse_args(argv)
    if not str(getattr(args, "job_id", "0")).isdigit():
        print(f"bad job id {args.job_id!r}")
        return 2
    try:
        config = load(args.config)
    except ConfigError as exc:
        # task-env prints this to the job's stderr; prolog/epilog land in the slurmd log
        print(f"QPU configuration error on this node: {exc}")
        return 1
    if args.cmd == "task-env":
        from qproxy.slurm.taskenv import NoQPU, task_env

        try:
            env = task_env(config, args.job_id)
        except NoQPU as exc:
            print(exc)
            return 1
        # "-NAME" unsets NAME (spank_hooks/slurmstepd.c)
        sys.stdout.write("".join(f"-{k}\n" if v is None else f"{k}={v}\n"
                                 for k, v in env.items()))
        return 0
    setup_logging(config)
    if args.cmd in ("prolog", "epilog"):
        try:
            return _prolog_epilog(args, config)
        finally:
            log.info("job %s: %s hook took %.0f ms, %.0f of them Python's start and imports",
                     args.job_id, args.cmd, _since_exec_ms(), entered)
    from qproxy.slurm.reap import reap
    from qproxy.slurmcli.run import SlurmError

    try:
        done = reap(config, everything=args.all)
    except SlurmError as exc:
        log.error("reap: %s; nothing done", exc)
        return 1
    print(json.dumps([asdict(u) for u in done]))
    return 0
