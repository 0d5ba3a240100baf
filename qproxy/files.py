"""The one atomic file writer: records, env files, summaries, leases, secrets, payloads and
results are all written through it, so a reader (another hook, the job, the epilog) sees
either the old file or the whole new one, never half of it. And the one private (0600)
append-only open: logs, ledgers, the audit and usage chains.

Standard library only (the hooks import it on every job start). The job-side fast path
(``qproxy/client/slurm_mode/fastrun.py``) keeps its own three lines on purpose: it runs as a
bare script and must not import this package.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PRIVATE = 0o600


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (a 0600 lock file, created if missing) for the
    block: the node's read-modify-write steps (leases, metrics totals) between hooks."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def open_append(path: str | Path, *, readable: bool = False, nofollow: bool = False) -> int:
    """A descriptor appending to ``path`` (created 0600 if missing): logs, ledgers, audit
    chains. ``readable`` for a file that is also read back through the same descriptor (the
    usage log's tail check); ``nofollow`` where a symlink planted in the path's place must
    be refused (audit and usage logs)."""
    flags = os.O_CREAT | os.O_APPEND | (os.O_RDWR if readable else os.O_WRONLY)
    return os.open(path, flags | (os.O_NOFOLLOW if nofollow else 0), PRIVATE)


def atomic_write(path: Path, data: bytes | str, mode: int = PRIVATE, *,
                 fsync: bool = True) -> None:
    """Write ``data`` to a temp file beside ``path`` (created with ``mode``, before any byte is
    in it, so a private file is never briefly readable), then rename it over ``path``.

    ``fsync=False`` where durability buys nothing: files under ``state_dir`` live on a tmpfs
    (``/run``) and are on every job's start.

    The temp file gets a random name and is created with O_EXCL|O_NOFOLLOW: a symlink or file
    planted at a predictable name (``.<name>.<pid>.tmp`` before) is never followed or reused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
