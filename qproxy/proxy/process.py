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
