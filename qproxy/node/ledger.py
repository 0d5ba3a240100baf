"""Ledger of created upstream work: ``{state_dir}/<job>/ledger.jsonl``.

The proxy appends every upstream job/session id to the ledger (fsync'ed) the moment upstream
creates it, so the Slurm epilog can cancel leftovers and account QPU time even if the proxy
crashed (``qproxy.upstream.leftovers``), and a restarted proxy keeps its job's work. Booked
usage lines (``{"kind": "usage", "id", "quantum_seconds"}``) are written by the proxy's
``UsageBook`` (qproxy/proxy/usage.py). Standard library + orjson: the epilog reads it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from qproxy.files import open_append


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, kind: str, ident: str, **extra: Any) -> None:
        line = orjson.dumps({"kind": kind, "id": ident, "time": time.time(), **extra}) + b"\n"
        fd = open_append(self.path)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def read_ledger(path: Path) -> tuple[list[str], list[str]]:
    """(job ids, session ids) in creation order; unreadable lines are skipped."""
    jobs: list[str] = []
    sessions: list[str] = []
    try:
        raw = path.read_bytes()
    except OSError:
        return jobs, sessions
    for line in raw.splitlines():
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        target = jobs if rec.get("kind") == "job" else sessions
        if rec.get("kind") in ("job", "session") and rec.get("id") not in target:
            target.append(str(rec["id"]))
    return jobs, sessions


def read_usage(path: Path) -> dict[str, float]:
    """Booked quantum seconds per upstream job (``usage`` lines; see proxy/usage.py)."""
    booked: dict[str, float] = {}
    try:
        raw = path.read_bytes()
    except OSError:
        return booked
    for line in raw.splitlines():
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        value = rec.get("quantum_seconds") if isinstance(rec, dict) else None
        if rec.get("kind") == "usage" and isinstance(value, int | float):
            booked[str(rec.get("id"))] = float(value)
    return booked
