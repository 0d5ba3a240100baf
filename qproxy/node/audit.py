"""Per-job audit log: JSON lines, an HMAC chain against tampering, a size cap, a final record.

Each record carries ``seq``, ``prev`` (the previous record's hash; 64 zeros for the first)
and ``hash`` = HMAC-SHA256 under the centre's audit key (``[paths].audit_key_file``, root
only, outside ``audit_dir``) over the record's canonical JSON (sorted keys, without ``hash``);
a log opened without a key (older logs, tools) uses plain sha256 and says so in its first
record (``chain``). Editing a record breaks its hash, deleting or reordering records breaks
the ``seq``/``prev`` links, and -- because nobody without the key can compute a valid hash --
a rewritten log cannot be re-chained. Every writer ends with a signed ``close`` record, so a
log cut at its tail (or whose writer died) is reported by ``qproxy audit verify``.

Bounded on purpose (docs/security.md): every string field is cut at ``FIELD_MAX`` characters
(with its length and a hash of the whole), ordinary records stop at ``max_bytes`` with one
``audit_full`` record, and a write that fails (ENOSPC, EIO) is undone (the file is truncated
back to its last complete record) and raises :class:`AuditUnavailable` for the caller to
refuse work it cannot audit. The framing records (start, summary, close, job_end) may use a
small reserve above the cap so that a full log still ends properly.

Repeated errors are cheap (issue 24 item 6: a job's own authenticated 404s with long paths
were ~1.9 KB each, 64 MiB in ~10 s): a record passed with a ``repeat`` key (its shape, e.g.
status + method + route) is written in full the first time; the same shape again within
``repeat_seconds`` of that is only counted, and the run ends with one ``repeated`` record
(``count``, ``first_seq``, the ``last`` record's fields and time) when its window is over,
when more than ``MAX_RUNS`` shapes are open, or before the log's ``summary``/``close``. Both
are ordinary chained records, so ``qproxy audit verify`` checks them as any other; what a
crash loses is one open window's count (and the log has no ``close``, which verify reports).

The node's audit space (``node/auditbudget.py``) is shared by all jobs of the node: with a
``share``, every record's bytes are counted against its user's share, and an ordinary record
that does not fit is refused like a failing disk (``AuditUnavailable``, 503 for the job's
authenticated work; once per episode an ``audit_budget`` record says why).

Callers must never pass tokens or secrets: records hold only ids, sizes, statuses and policy
decisions.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from qproxy.config import Config
from qproxy.files import open_append
from qproxy.node.auditbudget import NodeBudget, Share

GENESIS = "0" * 64
# A user controls paths, backend names, ids and messages built from them: an 8 KB path must
# not become 16 KB of audit log (it did: JSON-escaped control bytes, twice, before this cap).
FIELD_MAX = 256
# Room above the cap for the records that frame a log (summary, close, the epilog's job_end).
RESERVE = 64 * 1024
FRAMING = frozenset({"start", "summary", "close", "audit_full", "audit_gap", "job_end",
                     "repeated", "audit_budget"})
# Shapes of repeated records counted at once; each open one costs a ``repeated`` record of
# at most ~2 KB at close, within RESERVE.
MAX_RUNS = 16
REPEAT_SECONDS = 10.0
# How long after a failed write the log is tried again (a cleaned disk comes back).
RETRY_SECONDS = 1.0
KEY_BYTES = 32


class AuditUnavailable(RuntimeError):
    """The record could not be written (log full, or the disk refused it)."""


def canonical(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def record_hash(record: dict[str, Any], key: bytes | None = None) -> str:
    body = canonical({k: v for k, v in record.items() if k != "hash"})
    if key is None:
        return hashlib.sha256(body).hexdigest()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def bound(value: Any, limit: int = FIELD_MAX) -> Any:
    """``value`` with every string cut to ``limit`` characters: a cut string keeps its head
    and says how long it was and what it hashed to (so two long paths stay distinguishable)."""
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return f"{value[:limit]}...[{len(value)} chars, sha256:{digest}]"
    if isinstance(value, dict):
        return {bound(k, 64): bound(v, limit) for k, v in list(value.items())[:32]}
    if isinstance(value, list | tuple):
        return [bound(v, limit) for v in value[:32]]
    return value


# ---------------------------------------------------------------------------- the key
class AuditKeyError(OSError):
    """The audit key file is missing, unreadable or not root's own."""


def _check_key_file(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise AuditKeyError(f"audit key {path} is not a regular file")
    if st.st_mode & 0o077:
        raise AuditKeyError(f"audit key {path} is accessible by group/others (chmod 600 {path})")
    if st.st_uid not in (0, os.geteuid()):
        raise AuditKeyError(f"audit key {path} is owned by uid {st.st_uid}, not root")


def load_key(path: Path, *, create: bool = False) -> bytes:
    """The audit HMAC key; with ``create`` a missing file is made (random, 0600, O_EXCL)."""
    if create:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            pass
        else:
            try:
                os.write(fd, secrets.token_hex(KEY_BYTES).encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise AuditKeyError(f"cannot read audit key {path}: {exc.strerror}") from None
    try:
        _check_key_file(path, os.fstat(fd))
        raw = os.read(fd, 4096).strip()
    finally:
        os.close(fd)
    if len(raw) < KEY_BYTES:
        raise AuditKeyError(f"audit key {path} is too short")
    return raw


# ---------------------------------------------------------------------------- the writer
def _head_and_tail(path: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None, int]:
    """First and last record of an existing log and its size (a restarted proxy and the
    epilog append to it). Records are bounded, so the tail is in the last 64 KiB."""
    try:
        with path.open("rb") as fh:
            first_line = fh.readline(RESERVE)
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - RESERVE))
            tail = fh.read().splitlines()
    except OSError:
        return None, None, 0

    def parse(raw: bytes) -> dict[str, Any] | None:
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return rec if isinstance(rec, dict) and "hash" in rec else None

    last = next((r for r in map(parse, reversed(tail)) if r is not None), None)
    return parse(first_line), last, size


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class _Run:
    """Records of one shape counted since its first was written in full."""

    first_seq: int
    opened: float
    count: int = 0
    last: dict[str, Any] | None = None
    last_time: str = ""


class AuditLog:
    """One job's audit log. ``key``: the HMAC key (None: read the key file the log's first
    record names, if it is root's; else plain sha256). ``structured`` is accepted for older
    callers: records are rendered the same way either way (one ``os.write`` per record, so the
    size cap and a failing disk are exact, and nothing sits in a buffer)."""

    def __init__(self, path: Path, *, structured: bool = True, key: bytes | None = None,
                 key_file: Path | None = None, max_bytes: int = 0,
                 clock: Callable[[], float] = time.monotonic, share: Share | None = None,
                 repeat_seconds: float = REPEAT_SECONDS, **context: Any) -> None:
        del structured
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        first, last, self.size = _head_and_tail(path)
        if key is None and key_file is None and first is not None and first.get("key_file"):
            key_file = Path(str(first["key_file"]))
        if key is None and key_file is not None:
            key = load_key(key_file)
        self._key = key
        self._key_file = key_file
        self.seq = int(last["seq"]) + 1 if last and isinstance(last.get("seq"), int) else 0
        self.head = str(last["hash"]) if last else GENESIS
        self.max_bytes = max_bytes
        self.full = False
        self.failed: str | None = None  # why the last write failed, until one succeeds
        self.lost = 0  # records that could not be written since the last success
        self._retry_at = 0.0
        self._clock = clock
        self._wrote = False
        self._context = context
        self._share = share
        self._over_budget = False
        self.repeat_seconds = repeat_seconds
        self._runs: dict[str, _Run] = {}  # by shape, oldest opened first
        self._fd = open_append(path, nofollow=True)

    @property
    def count(self) -> int:
        return self.seq

    @property
    def keyed(self) -> bool:
        return self._key is not None

    def chain_fields(self) -> dict[str, Any]:
        """For the log's first record: how it is chained and with which key file."""
        if self._key is None:
            return {"chain": "sha256"}
        return {"chain": "hmac-sha256", "key_file": str(self._key_file or "")}

    def available(self) -> str | None:
        """None if ordinary records can be written now, else why not (for the 503)."""
        if self.full:
            return f"this job's audit log reached its size limit of {self.max_bytes} bytes"
        if self.failed is not None and self._clock() < self._retry_at:
            return f"this job's audit log cannot be written ({self.failed})"
        return None

    def record(self, event: str, repeat: str | None = None, **fields: Any) -> None:
        """Append one record; raise AuditUnavailable if it cannot be (full or failing).
        ``repeat``: the record's shape; a record of a shape already written within
        ``repeat_seconds`` is counted, not written (see the module's docstring)."""
        framing = event in FRAMING
        if framing and event != "start":
            self.flush_runs()
        elif self._runs:
            self._flush_expired()
        if not framing and (why := self.available()) is not None:
            if not self.full:
                self.lost += 1
            raise AuditUnavailable(why)
        if repeat is not None and self.repeat_seconds > 0 and (run := self._runs.get(repeat)):
            run.count += 1
            run.last, run.last_time = fields, _now()
            return
        if repeat is not None and self.repeat_seconds > 0 and len(self._runs) >= MAX_RUNS:
            self._flush_run(next(iter(self._runs)))  # the oldest
        try:
            if self.lost:  # the disk is back: say how many records are missing first
                self._write("audit_gap", {"lost_records": self.lost}, True)
                self.lost = 0
            self._write(event, fields if framing else bound(fields), framing)
        except AuditUnavailable:
            if not self.full:
                self.lost += 1
            raise
        if repeat is not None and self.repeat_seconds > 0:
            self._runs[repeat] = _Run(self.seq - 1, self._clock())

    def _flush_expired(self) -> None:
        now = self._clock()
        for shape in [k for k, r in self._runs.items() if now - r.opened >= self.repeat_seconds]:
            self._flush_run(shape)

    def _flush_run(self, shape: str) -> None:
        run = self._runs.pop(shape)
        if not run.count:
            return
        try:
            self._write("repeated", {"shape": shape, "count": run.count,
                                     "first_seq": run.first_seq, "last_time": run.last_time,
                                     "last": bound(run.last or {}),
                                     "window_seconds": self.repeat_seconds}, True)
        except AuditUnavailable:
            self.lost += run.count  # said in the next audit_gap record

    def flush_runs(self) -> None:
        """End every open run of repeated records (its ``repeated`` record)."""
        for shape in list(self._runs):
            self._flush_run(shape)

    def _write(self, event: str, fields: dict[str, Any], framing: bool) -> None:
        rec: dict[str, Any] = {**self._context, **fields, "event": event, "time": _now(),
                               "seq": self.seq, "prev": self.head}
        rec["hash"] = record_hash(rec, self._key)
        line = canonical(rec) + b"\n"
        if not framing and self.max_bytes and self.size + len(line) > self.max_bytes:
            self.full = True
            self._write("audit_full", {"max_bytes": self.max_bytes, "size": self.size}, True)
            raise AuditUnavailable(self.available() or "audit log full")
        if framing and self.max_bytes and self.size + len(line) > self.max_bytes + RESERVE:
            raise AuditUnavailable("audit log reserve exhausted")
        if self._share is not None:
            self._take(len(line), framing)
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(28, "short write")
        except OSError as exc:
            self._undo(exc)
            raise AuditUnavailable(f"audit write failed: {exc.strerror or exc}") from None
        self.size += len(line)
        self.seq += 1
        self.head = rec["hash"]
        self.failed = None
        self._wrote = True

    def _take(self, n: int, framing: bool) -> None:
        """Count ``n`` bytes against the user's share of the node's audit space (framing
        records always fit: a log must be able to end); raise AuditUnavailable if not."""
        assert self._share is not None
        try:
            ok = self._share.take(n, self.size, force=framing)
        except OSError as exc:  # the ledger (state_dir) cannot be read or written
            if framing:
                return
            why = f"audit budget ledger: {exc.strerror or exc}"
        else:
            if ok:
                self._over_budget = False
                return
            why = self._share.why_not()
        if not self._over_budget:
            self._over_budget = True
            self._write("audit_budget", {"reason": why}, True)
        self.failed = why  # after that record, whose success would clear it
        self._retry_at = self._clock() + RETRY_SECONDS
        raise AuditUnavailable(why)

    def _undo(self, exc: OSError) -> None:
        """Cut a torn record off again so the chain stays intact for when the disk is back."""
        self.failed = os.strerror(exc.errno) if exc.errno else str(exc)
        self._retry_at = self._clock() + RETRY_SECONDS
        try:
            os.ftruncate(self._fd, self.size)
        except OSError:
            pass

    def close(self) -> None:
        """The signed final record (if this writer wrote anything), then fsync and close."""
        if self._fd < 0:
            return
        self.flush_runs()
        if self._wrote:
            try:
                self._write("close", {"records": self.seq + 1, "lost_records": self.lost}, True)
            except AuditUnavailable:
                pass
        try:
            os.fsync(self._fd)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = -1
        if self._share is not None:
            try:
                self._share.close()
            except OSError:
                pass  # the ledger is rebuilt from audit_dir on its next rescan


def open_job_log(conf: Config, path: Path, *, user: str, **context: Any) -> AuditLog:
    """A job's audit log as its proxy (or relay) opens it: keyed (the key made on first
    use), capped per job, repeated errors summarised, every byte counted against ``user``'s
    share of the node's audit space."""
    px = conf.proxy
    share = None
    if px.audit_node_max_bytes or px.audit_user_max_bytes:
        budget = NodeBudget(conf.state_dir, conf.audit_dir, px.audit_node_max_bytes,
                            px.audit_user_max_bytes)
        share = Share(budget, user, path)
    return AuditLog(path, key=load_key(conf.audit_key_file, create=True),
                    key_file=conf.audit_key_file, max_bytes=px.audit_max_bytes, share=share,
                    repeat_seconds=px.audit_repeat_seconds, user=user, **context)


# ---------------------------------------------------------------------------- verification
def _trusted_key(rec: dict[str, Any] | None) -> bytes | None:
    """The key a log's first record names, if that file is a root-owned 0600 key (a forger
    could name a key file of their own, never one that root owns and only root reads)."""
    if not rec or not rec.get("key_file"):
        return None
    return load_key(Path(str(rec["key_file"])))


def verify(path: Path, expect_head: str | None = None, key: bytes | None = None,
           require_final: bool = True) -> tuple[bool, int, str]:
    """Check the chain; return (ok, line number of the first problem or count, message).

    ``key``: the audit key (None: the root-owned key file the log names). A log chained with
    a key must verify under it; a keyless log is reported as such. ``expect_head`` (from
    summary.json) must be one of the chain's hashes; with ``require_final`` the last record
    must be a writer's ``close`` record: both detect records cut off the end.
    """
    prev, seq = GENESIS, 0
    head_seen = expect_head is None
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        return False, 0, f"cannot read {path}: {exc.strerror}"
    lineno = 0
    rec: Any = None
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            return False, lineno, "empty line"
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return False, lineno, "not valid JSON"
        if not isinstance(rec, dict) or "hash" not in rec:
            return False, lineno, "not an audit record"
        if lineno == 1 and rec.get("chain") == "hmac-sha256" and key is None:
            try:
                key = _trusted_key(rec)
            except AuditKeyError as exc:
                return False, lineno, f"cannot check the HMAC chain: {exc}"
        if lineno == 1 and key is not None and rec.get("chain") != "hmac-sha256":
            return False, lineno, "log is not HMAC-chained (written without the audit key)"
        if rec.get("hash") != record_hash(rec, key):
            return False, lineno, "record was modified (hash mismatch)"
        if rec.get("seq") != seq or rec.get("prev") != prev:
            return False, lineno, "chain broken: a record was deleted, inserted or reordered"
        prev, seq = rec["hash"], seq + 1
        head_seen = head_seen or prev == expect_head
    if not head_seen:
        # Records may follow the proxy's summary (the epilog appends), never be cut before it.
        return False, lineno, "recorded head not in the chain (records removed at the end)"
    if require_final and (not isinstance(rec, dict) or rec.get("event") != "close"):
        return False, lineno, ("no final record: the log was cut at its end, or its writer "
                               "is still running or died")
    kind = "HMAC" if key is not None else "sha256 (unkeyed)"
    return True, seq, f"ok: {seq} records, {kind} chain, head {prev[:16]}"
