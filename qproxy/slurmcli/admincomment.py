"""The AdminComment the prolog sets on a job (:class:`QpuComment`): its text, reading it back,
and setting it -- live with ``scontrol update``, or after the job with ``sacctmgr`` (root)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
from dataclasses import dataclass

from qproxy.files import open_append

log = logging.getLogger("qproxy.slurm")  # the hooks' logger, as before the package split

# The prolog's AdminComment (QpuComment below): it holds spaces, which `scontrol -o`
# prints unquoted, so the text parser finds it by this pattern, not by the next blank.
QPU_FIELDS = (r"qpu backend=(\S+) lanes=(\d+)(?: primary=(\S+))?(?: run=(\d+))?"
              r"(?: sig=([0-9a-f]{1,64}))?")
ADMIN_TEXT = re.compile(r"\bAdminComment=(" + QPU_FIELDS + ")")


@dataclass(frozen=True)
class QpuComment:
    """The AdminComment the prolog sets: ``qpu backend=B lanes=N`` and, for a multi-node
    job, ``primary=ADDR:PORT run=R sig=S`` (``primary=failed`` when the first node's proxy
    could not start; ``sig``: qproxy.proxy.relay.auth.sign_primary under the cluster key).
    Only root / the SlurmUser can set AdminComment, never the job's user -- but the job's
    user writes other fields of the same ``scontrol -o`` line (JobName, Comment, WorkDir,
    ...), so a root decision reads AdminComment from JSON (``squeue --json``) and checks
    ``sig``, never from that text (issue 24)."""

    backend: str
    lanes: int
    primary: str = ""
    run: int | None = None
    sig: str = ""


_QPU_COMMENT = re.compile(QPU_FIELDS + r"(?:\s|$)")


def qpu_comment(text: str) -> QpuComment | None:
    m = _QPU_COMMENT.match(text.strip())
    if not m:
        return None
    return QpuComment(m.group(1), int(m.group(2)), m.group(3) or "",
                      int(m.group(4)) if m.group(4) else None, m.group(5) or "")


def start_admin_comment(job_id: str, text: str) -> subprocess.Popen[str] | None:
    """Start ``scontrol update job=N AdminComment=...``; the prolog does its own work while
    it runs and collects the answer with ``finish_admin_comment``."""
    try:
        return subprocess.Popen(["scontrol", "update", f"job={job_id}", f"AdminComment={text}"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        log.warning("job %s: scontrol update AdminComment failed: %s", job_id, exc)
        return None


def set_admin_comment(job_id: str, text: str) -> bool:
    return finish_admin_comment(job_id, start_admin_comment(job_id, text))


def finish_admin_comment(job_id: str, proc: subprocess.Popen[str] | None,
                         timeout: float = 15) -> bool:
    if proc is None:
        return False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        log.warning("job %s: scontrol update AdminComment timed out", job_id)
        return False
    if proc.returncode != 0:
        log.warning("job %s: scontrol update AdminComment: %s", job_id,
                    (err or out).strip()[:200])
    return proc.returncode == 0


def book_admin_comment(job_id: str, text: str, timeout: float, log_path: str) -> bool:
    """Set a finished job's AdminComment in the accounting database, in the background.

    ``scontrol update`` refuses once the job is completing ("Job has already finished"), but
    slurmdbd takes ``sacctmgr modify job`` from root then (checked on 22.05 and 24.11; users
    cannot change AdminComment, only Comment). Detached, bounded by ``timeout`` (coreutils):
    the epilog is on the path to the node's next job and must not wait for slurmdbd."""
    cmd = ["timeout", str(int(max(timeout, 1))), "sacctmgr", "-i", "modify", "job", "where",
           f"jobid={job_id}", "set", f"AdminComment={text}"]
    try:
        fd = open_append(log_path)
    except OSError:
        fd = subprocess.DEVNULL  # negative: nothing to close
    try:
        subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                         start_new_session=True, close_fds=True)
    except OSError as exc:
        log.warning("job %s: sacctmgr modify job failed to start: %s", job_id, exc)
        return False
    finally:
        if fd >= 0:
            os.close(fd)
    return True
