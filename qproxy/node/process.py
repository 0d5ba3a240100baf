"""How a running ``qproxy serve`` process is recognised (the PID-reuse guard), shared by the
spare pool, the Slurm hooks that start and stop proxies, and ``qproxy status`` / ``metrics``:
the one place a job id (or a spare id) is matched against a live process."""

from __future__ import annotations

import os
import re
from pathlib import Path

# The interpreter a proxy runs in. A name pattern, not sys.executable: the test suites of the
# chroot Slurm versions look at a chroot's proxy (/chroot/.../python3.13) from the host's.
_PYTHON = re.compile(r"python3(\.\d+)?")


def _root_python(pid: int) -> bool:
    """Every uid of pid is root's and its executable is a Python interpreter. A job's user can
    start a process whose command line reads ``qproxy serve --job-id 7`` (and wait for its pid
    to be reused), never one running as root."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    uids = next((line.split()[1:] for line in status.splitlines()
                 if line.startswith("Uid:")), None)
    if uids != ["0", "0", "0", "0"]:
        return False
    # An upgraded interpreter shows as "/usr/bin/python3.11 (deleted)": still ours.
    name = os.path.basename(exe.removesuffix(" (deleted)"))
    return _PYTHON.fullmatch(name) is not None


def serve_options(pid: int) -> set[tuple[str, str]]:
    """(option, value) pairs of process pid if it is root's `qproxy serve`, else empty."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return set()
    words = [a.decode(errors="replace") for a in argv]
    if "serve" not in words or not _root_python(pid):
        return set()
    return set(zip(words, words[1:], strict=False))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _netns(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def serve_processes() -> dict[int, set[tuple[str, str]]]:
    """Every ``qproxy serve`` process of this node: pid -> its (option, value) pairs (see
    ``serve_options``); the reaper and ``qproxy status`` look for proxies no record names.

    "This node" = our network namespace (where the proxy's loopback port is): where several
    nodes share one host (the test clusters: a network namespace per node, one PID space, the
    same config path on each node), another node's proxy must never look like ours. (Not the
    mount namespace: `scripts/cluster exec --node` makes a fresh one per command.)"""
    found: dict[int, set[tuple[str, str]]] = {}
    here = _netns("self")
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if name.isdigit() and (opts := serve_options(int(name))) and alive(int(name)) and (
                here is not None and _netns(name) == here):
            found[int(name)] = opts
    return found


# --- the start time (scale branch): a spare's forked proxies all carry the spare's command
# line, so the guard for them is that plus the start time the spare reported at the fork.
def start_ticks(pid: int) -> int | None:
    """When pid started (clock ticks since boot, /proc/PID/stat field 22); with the pid it
    names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat.rpartition(b")")[2].split()  # after the command name, which may hold ")"
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def is_our_proxy(pid: int, job_id: str, spare: str | None = None,
                 start: int | None = None) -> bool:
    """Guard against PID reuse: the process must be `qproxy serve --job-id <job_id>`, or
    forked by the spare the prolog handed this job to (`qproxy serve --spare <spare>`, see
    qproxy.proxy.spare) -- and, when the record has one, have the recorded start time: all
    of a spare's proxies (and the spare) share that command line."""
    wanted = {("--job-id", job_id)} | ({("--spare", spare)} if spare else set())
    if not serve_options(pid) & wanted:
        return False
    return start is None or start_ticks(pid) == start


def is_spare(pid: int, spare_id: str) -> bool:
    """PID-reuse guard: the process must be ``qproxy serve --spare <spare_id>``."""
    return ("--spare", spare_id) in serve_options(pid)
