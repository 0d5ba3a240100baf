"""How a running ``qproxy serve`` process is recognised (the PID-reuse guard's facts), shared by
the proxy's own spare pool and the Slurm hooks that start and stop proxies."""

from __future__ import annotations

import os
from pathlib import Path


def serve_options(pid: int) -> set[tuple[str, str]]:
    """(option, value) pairs of process pid if it is a `qproxy serve`, else empty."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return set()
    words = [a.decode(errors="replace") for a in argv]
    if "serve" not in words:
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
