"""The cluster's processes by PID: each daemon is spawned with its PID in STATE/pid/NAME.pid,
found again only when its command line still names it or the state dir (PID reuse), and
stopped all at once. Nothing is ever found or killed by name."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from scripts.localcluster.settings import Settings
from scripts.localcluster.system import log, run


def pid_of(s: Settings, name: str) -> int | None:
    try:
        pid = int((s.pids / f"{name}.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    # guard against PID reuse: the command line must mention our state dir or binary
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    return pid if name.rstrip("d") in cmd or str(s.state) in cmd else None


def running(s: Settings) -> dict[str, int]:
    """Which of this layout's daemons run, by their PID files."""
    return {n: p for n in s.daemons if (p := pid_of(s, n)) is not None}


def spawn(s: Settings, name: str, cmd: list[str], env: dict[str, str]) -> None:
    """CMD in its own session, output appended to LOGS/NAME.out, PID recorded."""
    logf = open(s.logs / f"{name}.out", "ab")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                            start_new_session=True, env=env, cwd="/")
    (s.pids / f"{name}.pid").write_text(f"{proc.pid}\n")


def forget(s: Settings, names: Iterable[str]) -> None:
    """Remove the PID files of NAMES."""
    for name in names:
        (s.pids / f"{name}.pid").unlink(missing_ok=True)


def start_munged(s: Settings, prefix: list[str]) -> None:
    """munged on the state dir's socket, run with PREFIX (where this cluster's munge is)."""
    key = s.munge / "munge.key"
    if not key.exists():
        key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o600)
    for stale in s.munge.glob("munge.socket*"):
        stale.unlink()
    run(*prefix, "munged", "--force", f"--socket={s.munge_socket}", f"--key-file={key}",
        f"--pid-file={s.pids}/munged.pid", f"--log-file={s.logs}/munged.log",
        f"--seed-file={s.munge}/munge.seed")
    # the socket dir must be traversable by the job user (o+x)
    s.munge.chmod(0o711)


def stop_pids(pids: dict[str, int]) -> None:
    """SIGTERM all at once, wait (slurm daemons take ~1-2 s), SIGKILL stragglers. The
    emulator gets 3 s: it holds no state worth a graceful exit and takes ~8 s otherwise."""
    for pid in pids.values():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    start = time.monotonic()
    alive = dict(pids)
    while alive:
        for name, pid in list(alive.items()):
            grace = 3 if name in ("emulator", "s3") else 15
            if not _alive(pid):
                del alive[name]
            elif time.monotonic() - start > grace:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                del alive[name]
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap if it is our child
    except ChildProcessError:
        pass
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _self_and_ancestors() -> set[int]:
    """This process and every process above it (from /proc/PID/stat's ppid field)."""
    chain, pid = set(), os.getpid()
    while pid > 1 and pid not in chain:
        chain.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return chain


def stop_namespace_processes(spaces: Iterable[str]) -> None:
    """Stop whatever still runs inside these network namespaces before they are deleted:
    all of it is this cluster's (job proxies, spares, job steps) and, after a test run was
    killed, nobody else would ever stop it (a deleted namespace keeps its processes alive,
    nameless). Not this process or its ancestors: the tests of a single-node cluster run
    inside its namespace and call `down` at their end."""
    keep = _self_and_ancestors()
    pids: dict[str, int] = {}
    for ns in spaces:
        out = run("ip", "netns", "pids", ns, capture_output=True, check=False).stdout
        pids.update({f"{ns}:{p}": int(p) for p in out.split() if int(p) not in keep})
    if pids:
        log(f"stopping {len(pids)} leftover process(es) in the namespaces")
        stop_pids(pids)
