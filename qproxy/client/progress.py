"""qrun's progress on stderr: submitted / queued (position, where the upstream reports it) /
running / done, with the elapsed time. The output file never changes: progress only polls
the job's status before the same ``job.result()`` qrun calls without it.

On a terminal one line is rewritten in place; elsewhere (``--progress`` into a Slurm output
file) one line per change of state or queue position, so a log gets a handful of lines.
"""

from __future__ import annotations

import time
from typing import Any, TextIO

FINAL = frozenset({"DONE", "CANCELLED", "ERROR"})


class Progress:
    def __init__(self, stream: TextIO, live: bool) -> None:
        self.stream = stream
        self.live = live
        self.start = time.monotonic()
        self.last: tuple[str, str] | None = None

    def show(self, state: str, detail: str = "") -> None:
        changed = (state, detail) != self.last
        self.last = (state, detail)
        if not (changed or self.live):
            return
        line = f"qrun: {state}{f' ({detail})' if detail else ''}, " \
               f"{time.monotonic() - self.start:.0f} s"
        if self.live:
            self.stream.write("\r\033[K" + line + ("\n" if state in ("done", "failed",
                                                                       "cancelled") else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _position(job: Any) -> int | None:
    """IBM's job metrics carry ``position_in_queue`` while a job waits (so does the
    emulator's); other upstreams may not: then nothing is shown."""
    try:
        pos = job.metrics().get("position_in_queue")
    except Exception:  # noqa: BLE001 - progress must never fail the run
        return None
    return pos if isinstance(pos, int) and not isinstance(pos, bool) else None


def wait(job: Any, progress: Progress, interval: float = 1.0) -> Any:
    """Poll until the job is final, showing each state, then return ``job.result()``."""
    progress.show("submitted", f"job {job.job_id()}")
    while True:
        try:
            status = str(job.status()).upper()
        except Exception:  # noqa: BLE001 - a failed poll: result() will tell the real story
            break
        detail = ""
        if status == "QUEUED":
            pos = _position(job)
            detail = f"position {pos} in the device's queue" if pos is not None else ""
        word = {"DONE": "done", "ERROR": "failed"}.get(status, status.lower())
        progress.show(word, detail)
        if status in FINAL:
            break
        time.sleep(interval)
    return job.result()
