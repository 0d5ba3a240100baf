"""Per-job state under ``{state_dir}/<jobid>/`` (0700 root): the connection record, the
proxy's env/ledger/summary files, its log, and the error the prolog recorded for the user (or
its note that the job has no QPU here by design)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from qproxy.config import Config
from qproxy.files import atomic_write, open_append
from qproxy.records import METRICS_FILE, STATUS_FILE, ProxyRecord, ProxyStatus

log = logging.getLogger("qproxy.slurm")


def write_private(path: Path, data: str) -> None:
    """Atomic 0600 write: readers (task-env, epilog) never see half a file. No fsync: the
    state dir is a tmpfs (/run) and this is on every job's start."""
    atomic_write(path, data, fsync=False)


def ensure_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


@dataclass(frozen=True)
class JobState:
    root: Path
    job_id: str

    @classmethod
    def of(cls, config: Config, job_id: str) -> JobState:
        if not job_id.isdigit():
            raise ValueError(f"bad job id {job_id!r}")
        return cls(config.state_dir / job_id, job_id)

    record = property(lambda self: self.root / "record.json")
    error = property(lambda self: self.root / "error")
    note = property(lambda self: self.root / "no-qpu")
    env_file = property(lambda self: self.root / "proxy.env")
    ledger = property(lambda self: self.root / "ledger.jsonl")
    summary = property(lambda self: self.root / "summary.json")
    proxy_log = property(lambda self: self.root / "proxy.log")
    status = property(lambda self: self.root / STATUS_FILE)
    metrics = property(lambda self: self.root / METRICS_FILE)

    def create(self) -> None:
        ensure_private_dir(self.root.parent)
        ensure_private_dir(self.root)

    def _set_line(self, path: Path, message: str) -> None:
        self.create()
        write_private(path, message.replace("\n", " ").strip() + "\n")

    @staticmethod
    def _read_line(path: Path) -> str | None:
        try:
            return path.read_text().strip() or None
        except OSError:
            return None

    def set_error(self, message: str) -> None:
        """The one line the job's tasks will print before failing."""
        self._set_line(self.error, message)

    def read_error(self) -> str | None:
        return self._read_line(self.error)

    def set_note(self, message: str) -> None:
        """This job runs on this node without a QPU, by design (no error for its tasks)."""
        self._set_line(self.note, message)

    def read_note(self) -> str | None:
        return self._read_line(self.note)

    def write_record(self, record: ProxyRecord) -> None:
        write_private(self.record, record.to_json())

    def read_record(self) -> ProxyRecord | None:
        """The connection record, or None when absent, unreadable or malformed."""
        try:
            return ProxyRecord.from_json(json.loads(self.record.read_text()))
        except (OSError, ValueError):
            return None

    def read_status(self) -> ProxyStatus | None:
        """What the job's proxy last wrote about its lanes and upstream jobs."""
        try:
            return ProxyStatus.from_json(json.loads(self.status.read_text()))
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def audit_stem(job_id: str, relay_node: str = "") -> str:
    """``job-N`` (the job's audit log, its primary's on a multi-node job) or, for a relay,
    ``job-N.relay-NODE``: nodes may share one audit_dir, and each chain has one writer."""
    if not relay_node:
        return f"job-{job_id}"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in relay_node)[:64]
    return f"job-{job_id}.relay-{safe}"


def job_dirs(config: Config) -> list[str]:
    """Job ids that have state on this node."""
    try:
        return sorted(p.name for p in config.state_dir.iterdir() if p.name.isdigit())
    except OSError:
        return []


def setup_logging(config: Config | None) -> None:
    """Hooks log to {state_dir}/hooks.log (root only); stderr is discarded by the plugin."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if config is not None:
        try:
            ensure_private_dir(config.state_dir)
            path = config.state_dir / "hooks.log"
            os.close(open_append(path))
            handlers.append(logging.FileHandler(path))
        except OSError:
            pass
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(process)d %(message)s")
