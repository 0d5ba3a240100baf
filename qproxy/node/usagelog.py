"""``{audit_dir}/usage.jsonl``: one line per job and node, HMAC-chained like the audit logs.

Each line is a :class:`~qproxy.records.UsageRecord` plus ``seq``, ``prev`` and ``hash`` (the
audit key's HMAC over the line's canonical JSON, see :mod:`qproxy.node.audit`): editing a
line (a lower ``quantum_seconds``) or deleting one from the middle breaks the chain, and
nobody without the root-only key can re-chain the file. A cut tail cannot be seen in the
file itself, so :func:`verify` also joins it with the audit logs beside it: every audit log
that ends with the epilog's ``job_end`` must have its usage line, with the same figures and
the audit log's head (``audit_head``). Writers (the epilogs of concurrent jobs, the reaper)
hold an exclusive ``flock`` while they read the last line and append theirs.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from qproxy.files import open_append
from qproxy.node.audit import GENESIS, record_hash
from qproxy.node.audit import verify as verify_audit
from qproxy.records import UsageRecord

FILE_NAME = "usage.jsonl"
# What must agree between a usage line and its job's ``job_end`` audit record.
_FIGURES = ("job_id", "resource", "lanes", "upstream_jobs", "quantum_seconds", "role")


def _last_line(fd: int) -> bytes:
    size = os.lseek(fd, 0, os.SEEK_END)
    start = max(0, size - 65536)
    os.lseek(fd, start, os.SEEK_SET)
    tail = os.read(fd, size - start).rstrip(b"\n")
    return tail.rsplit(b"\n", 1)[-1]


def append(path: Path, usage: UsageRecord, key: bytes | None) -> None:
    """Append usage's line, chained to the last one (OSError if the disk refuses it)."""
    fd = open_append(path, readable=True, nofollow=True)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        seq, prev = 0, GENESIS
        last = _last_line(fd)
        if last:
            try:
                rec = orjson.loads(last)
                seq, prev = int(rec["seq"]) + 1, str(rec["hash"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                pass  # a line from before the chain (or broken): a new chain starts here
        line: dict[str, Any] = {**orjson.loads(usage.to_json()), "seq": seq, "prev": prev}
        line["hash"] = record_hash(line, key)
        os.write(fd, orjson.dumps(line, option=orjson.OPT_SORT_KEYS) + b"\n")
    finally:
        os.close(fd)  # releases the lock


def _job_end(log: Path) -> dict[str, Any] | None:
    """The last ``job_end`` record of an audit log (None if it has none)."""
    found = None
    try:
        for raw in log.read_bytes().splitlines():
            if b'"job_end"' in raw:
                rec = orjson.loads(raw)
                if isinstance(rec, dict) and rec.get("event") == "job_end":
                    found = rec
    except (OSError, orjson.JSONDecodeError):
        return None
    return found


def verify(path: Path, key: bytes | None) -> tuple[int, list[str]]:
    """(lines checked, problems): the chain of ``path`` under ``key``, and its agreement with
    the per-job audit logs in the same directory (each checked with its own chain)."""
    problems: list[str] = []
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        return 0, [f"{path}: cannot read: {exc.strerror}"]
    prev, seq = GENESIS, 0
    heads: dict[str, dict[str, Any]] = {}
    for n, raw in enumerate(lines, 1):
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError:
            problems.append(f"{path}:{n}: not valid JSON")
            continue
        if not isinstance(rec, dict) or "hash" not in rec:
            problems.append(f"{path}:{n}: not a chained usage line (written before qproxy "
                            "chained them, or edited)")
            prev, seq = GENESIS, 0  # what append() starts after it
            continue
        if rec["hash"] != record_hash(rec, key):
            problems.append(f"{path}:{n}: line was modified (hash mismatch)")
        if rec.get("seq") != seq or rec.get("prev") != prev:
            problems.append(f"{path}:{n}: chain broken: a line was deleted, inserted or "
                            "reordered")
        prev, seq = str(rec["hash"]), seq + 1
        if isinstance(rec.get("audit_head"), str):
            heads[rec["audit_head"]] = rec
    for log in sorted(path.parent.glob("*.jsonl")):
        if log.name == FILE_NAME:
            continue
        end = _job_end(log)
        if end is None:
            continue
        ok, at, msg = verify_audit(log, key=key, require_final=False)
        if not ok:
            problems.append(f"{log}:{at}: {msg}")
            continue
        line = heads.get(str(end.get("hash")))
        if line is None:
            problems.append(f"{log}: job {end.get('job_id')} ended but {path.name} has no "
                            "line for it (lines removed, or the usage write failed)")
            continue
        differs = [k for k in _FIGURES if line.get(k) != end.get(k)]
        if differs:
            problems.append(f"{path}: job {end.get('job_id')}'s line differs from its audit "
                            f"log in {', '.join(differs)}")
    return seq, problems


def fields_of(usage: UsageRecord) -> dict[str, Any]:
    """The figures the epilog also writes into the job's ``job_end`` audit record."""
    return {k: v for k, v in asdict(usage).items()
            if k not in ("time", "usage", "audit_head") and v is not None}
