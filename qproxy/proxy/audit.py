"""Per-job audit log: JSON lines written through structlog, hash-chained against tampering.

Each record carries ``seq``, ``prev`` (the previous record's hash; 64 zeros for the first)
and ``hash`` = sha256 over the record's canonical JSON (sorted keys, without ``hash``).
Editing a record breaks its hash, deleting or reordering records breaks the ``seq``/``prev``
links; the summary file records the last hash so truncation is detectable too. Callers must
never pass tokens or secrets: records hold only ids, sizes, statuses and policy decisions.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson

GENESIS = "0" * 64


def canonical(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


class _Chain:
    """structlog processor adding seq/prev/hash."""

    def __init__(self, seq: int = 0, head: str = GENESIS) -> None:
        self.seq = seq
        self.head = head

    def __call__(
        self, _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event["seq"] = self.seq
        event["prev"] = self.head
        event["hash"] = record_hash(dict(event))
        self.seq += 1
        self.head = event["hash"]
        return event


def _timestamp(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event["time"] = datetime.now(UTC).isoformat(timespec="milliseconds")
    return event


def _render(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> str:
    return canonical(dict(event)).decode()


def _tail(path: Path) -> tuple[int, str]:
    """Continue an existing chain (a restarted proxy appends to the same file)."""
    try:
        with path.open("rb") as fh:
            last = b""
            for line in fh:
                if line.strip():
                    last = line
        if last:
            rec = orjson.loads(last)
            return int(rec["seq"]) + 1, str(rec["hash"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return 0, GENESIS


class AuditLog:
    """``structured=False`` sends records through the same processors without structlog, so
    the lines are identical: for one-off writers on a latency path (the epilog appends one
    record while the QPU lane waits for it; importing structlog costs ~40 ms there)."""

    def __init__(self, path: Path, *, structured: bool = True, **context: Any) -> None:
        self.path = path
        self._structured = structured
        path.parent.mkdir(parents=True, exist_ok=True)
        seq, head = _tail(path)
        self._chain = _Chain(seq, head)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._fh: TextIO = os.fdopen(fd, "a", encoding="utf-8")
        self._context = context
        self._log: Any = None

    def _logger(self) -> Any:
        """structlog on first use: importing it (~40 ms, it pulls in asyncio) must not delay
        the proxy's env file, which a job's launch waits for; the file is open already."""
        if self._log is None:
            import structlog

            self._log = structlog.wrap_logger(
                structlog.WriteLogger(self._fh),
                processors=[_timestamp, self._chain, _render],
                context_class=dict,
                cache_logger_on_first_use=True,
            ).bind(**self._context)
        return self._log

    @property
    def head(self) -> str:
        return self._chain.head

    @property
    def count(self) -> int:
        return self._chain.seq

    def record(self, event: str, **fields: Any) -> None:
        if self._structured:
            self._logger().info(event, **fields)
            return
        # what structlog's BoundLogger + WriteLogger do with this pipeline
        event_dict: MutableMapping[str, Any] = {**self._context, **fields, "event": event}
        for processor in (_timestamp, self._chain):
            event_dict = processor(None, "info", event_dict)
        self._fh.write(_render(None, "info", event_dict) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh.closed:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()


def verify(path: Path, expect_head: str | None = None) -> tuple[bool, int, str]:
    """Check the chain; return (ok, line number of the first problem or count, message).

    ``expect_head`` (from summary.json) must be one of the chain's hashes: that detects
    records cut off the end, which the chain alone cannot.
    """
    prev, seq = GENESIS, 0
    head_seen = expect_head is None
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        return False, 0, f"cannot read {path}: {exc.strerror}"
    lineno = 0
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            return False, lineno, "empty line"
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return False, lineno, "not valid JSON"
        if not isinstance(rec, dict) or "hash" not in rec:
            return False, lineno, "not an audit record"
        if rec.get("hash") != record_hash(rec):
            return False, lineno, "record was modified (hash mismatch)"
        if rec.get("seq") != seq or rec.get("prev") != prev:
            return False, lineno, "chain broken: a record was deleted, inserted or reordered"
        prev, seq = rec["hash"], seq + 1
        head_seen = head_seen or prev == expect_head
    if not head_seen:
        # Records may follow the proxy's summary (the epilog appends), never be cut before it.
        return False, lineno, "recorded head not in the chain (records removed at the end)"
    return True, seq, f"ok: {seq} records, head {prev[:16]}"
