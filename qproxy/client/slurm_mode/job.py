"""The job handle ``SlurmSampler.run`` / ``SlurmEstimator.run`` return: one Slurm job.

Why files and Slurm both: qrun writes its result atomically and only on success, so the
result file appearing is the fastest and surest "done" (no need to wait for the job's epilog
or to poll slurmctld hard); Slurm is asked (about once a second) only to notice a job that
ends without one — failed, timed out, node failure, cancelled — and say which.
"""

from __future__ import annotations

import shutil
import threading
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from qiskit.primitives import BasePrimitiveJob

from qproxy.client.payload import read_result
from qproxy.client.slurm_mode.errors import (
    SlurmJobCancelled,
    SlurmJobFailed,
    SlurmJobTimeout,
    SlurmNodeFailure,
    SlurmPrimitiveError,
)
from qproxy.slurmcli import states
from qproxy.slurmcli.run import SlurmError
from qproxy.slurmcli.submit import Slurm

PAYLOAD = "payload.json"
RESULT = "result.json"
EXIT_CODE = "rc"
OUTPUT = "slurm.out"


class SlurmJobStatus(StrEnum):
    """Coarse status; the exact Slurm state is ``job.slurm_state``."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


FINAL = (SlurmJobStatus.DONE, SlurmJobStatus.FAILED, SlurmJobStatus.CANCELLED)

# Jobs submitted by this process and not yet final: the in-flight limit counts these.
_in_flight: set[SlurmPrimitiveJob] = set()
_in_flight_lock = threading.Lock()


def _coarse(state: str) -> SlurmJobStatus:
    if state in states.DONE_STATES:
        return SlurmJobStatus.DONE
    if state in states.CANCELLED_STATES:
        return SlurmJobStatus.CANCELLED
    if state in states.FINAL_STATES:
        return SlurmJobStatus.FAILED
    if state in states.RUNNING_STATES:
        return SlurmJobStatus.RUNNING
    return SlurmJobStatus.PENDING


def tail(path: Path, lines: int = 20, max_bytes: int = 8192) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


class SlurmPrimitiveJob(BasePrimitiveJob[Any, SlurmJobStatus]):
    """A primitive call running as Slurm job ``job_id()`` in directory ``jobdir``."""

    def __init__(
        self,
        job_id: str,
        jobdir: Path,
        slurm: Slurm,
        *,
        kind: str,
        backend: str,
        poll_interval: float = 0.1,
        slurm_poll_interval: float = 1.0,
        keep_files: bool = False,
        **metadata: Any,
    ) -> None:
        super().__init__(job_id, kind=kind, backend=backend, jobdir=str(jobdir), **metadata)
        self.jobdir = jobdir
        self.kind = kind
        self.backend = backend
        self.slurm_state = "PENDING"
        self.slurm_reason = ""
        self.exit_code = ""
        self.submitted = time.time()
        self._slurm = slurm
        self._poll = poll_interval
        self._slurm_poll = slurm_poll_interval
        self._keep = keep_files
        self._status = SlurmJobStatus.PENDING
        self._result: Any = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ status
    def _from_files(self) -> SlurmJobStatus | None:
        if (self.jobdir / RESULT).exists():
            return SlurmJobStatus.DONE
        return None

    def _refresh(self) -> SlurmJobStatus:
        """Ask Slurm; when it has forgotten the job, the exit-code file decides."""
        if self._status in FINAL:
            return self._status
        rec = self._slurm.show(self.job_id())
        if rec is not None and rec.state:
            self.slurm_state, self.slurm_reason = rec.state, rec.reason
            self.exit_code = rec.exit_code
            status = _coarse(rec.state)
        else:
            try:
                rc = (self.jobdir / EXIT_CODE).read_text().strip()
            except OSError:
                rc = ""
            self.slurm_state = "COMPLETED" if rc == "0" else "FAILED"
            self.slurm_reason = "job no longer known to Slurm" + ("" if rc else " (no exit code)")
            self.exit_code = rc
            status = SlurmJobStatus.DONE if rc == "0" else SlurmJobStatus.FAILED
        if (files := self._from_files()) is not None:
            status = files
        self._set(status)
        return status

    def _set(self, status: SlurmJobStatus) -> None:
        self._status = status
        if status in FINAL:
            with _in_flight_lock:
                _in_flight.discard(self)

    def status(self) -> SlurmJobStatus:
        if self._status not in FINAL and self._from_files() is not None:
            self._set(SlurmJobStatus.DONE)
            return self._status
        return self._refresh()

    def done(self) -> bool:
        return self.status() is SlurmJobStatus.DONE

    def running(self) -> bool:
        return self.status() is SlurmJobStatus.RUNNING

    def cancelled(self) -> bool:
        return self.status() is SlurmJobStatus.CANCELLED

    def in_final_state(self) -> bool:
        return self.status() in FINAL

    def _remove_jobdir(self) -> None:
        """Remove the job's directory. The result file can appear while the Slurm job is still
        ending, and its step may write its output file into the directory during the removal
        (seen on 24.11: the directory stayed, holding that file): then try again, off the
        caller's path, once Slurm reports the job final (bounded; not a daemon thread, so a
        program that exits right away still leaves nothing behind)."""
        shutil.rmtree(self.jobdir, ignore_errors=True)
        if not self.jobdir.exists():
            return

        def later() -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if self._refresh() in FINAL:
                        break
                except SlurmError:
                    pass
                time.sleep(0.5)
            shutil.rmtree(self.jobdir, ignore_errors=True)

        threading.Thread(target=later, name=f"rm-{self.job_id()}").start()

    # ------------------------------------------------------------------ result
    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job and load its PrimitiveResult; raise the matching
        SlurmPrimitiveError if the job ended without one."""
        with self._lock:
            if self._result is not None:
                return self._result
            deadline = None if timeout is None else time.monotonic() + timeout
            next_slurm = time.monotonic() + self._slurm_poll
            done_without_file: float | None = None
            while True:
                path = self.jobdir / RESULT
                if path.exists():
                    self._result = read_result(path)
                    self._set(SlurmJobStatus.DONE)
                    if not self._keep:
                        self._remove_jobdir()
                    return self._result
                now = time.monotonic()
                if now >= next_slurm or self._status in FINAL:
                    next_slurm = now + self._slurm_poll
                    try:
                        status = self._refresh()
                    except SlurmError:
                        status = self._status  # slurmctld hiccup: keep waiting
                    if status is SlurmJobStatus.DONE:
                        # a shared filesystem may show the file a little later
                        done_without_file = done_without_file or now
                        if now - done_without_file > 5:
                            raise self._error("completed without a result file")
                    elif status in FINAL:
                        raise self._error()
                if deadline is not None and now > deadline:
                    raise TimeoutError(
                        f"primitive job {self.job_id()} not finished after {timeout}s "
                        f"(Slurm state {self.slurm_state})")
                time.sleep(self._poll)

    def _error(self, what: str | None = None) -> SlurmPrimitiveError:
        state = self.slurm_state
        if state in states.CANCELLED_STATES:
            cls: type[SlurmPrimitiveError] = SlurmJobCancelled
            what = what or "was cancelled"
        elif state in states.TIMEOUT_STATES:
            cls, what = SlurmJobTimeout, what or "hit its time limit"
        elif state in states.NODE_FAIL_STATES:
            cls, what = SlurmNodeFailure, what or "was lost to a node failure"
        else:
            cls, what = SlurmJobFailed, what or "failed"
        detail = ", ".join(x for x in (
            f"Slurm state {state}",
            f"reason {self.slurm_reason}" if self.slurm_reason not in ("", "None") else "",
            f"exit code {self.exit_code}" if self.exit_code else "",
        ) if x)
        return cls(
            f"primitive job {self.job_id()} ({self.kind} on {self.backend}) {what}: {detail}; "
            f"files in {self.jobdir}",
            job_id=self.job_id(),
            slurm_state=state,
            output_tail=tail(self.jobdir / OUTPUT),
        )

    # ------------------------------------------------------------------ cancel
    def cancel(self, wait: float = 30.0) -> bool:
        """scancel the job and wait (up to ``wait`` s) until Slurm shows it final, so nothing
        is left holding a lane. True if it ended cancelled, False if it finished first."""
        if self._status in FINAL:
            return self._status is SlurmJobStatus.CANCELLED
        self._slurm.cancel(self.job_id())
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            rec = self._slurm.show(self.job_id())
            if rec is None or rec.state in states.FINAL_STATES:
                break
            time.sleep(0.2)
        status = self._refresh()
        return status is SlurmJobStatus.CANCELLED

    def __repr__(self) -> str:
        return (f"<SlurmPrimitiveJob {self.job_id()} {self.kind} on {self.backend}: "
                f"{self._status.value}>")
