"""Exceptions of the Slurm-backed primitives.

Each one names the Slurm job and carries the tail of its output, because the user's program
runs far from the job that failed: the job id and the last lines of qrun's output are what a
user (or their admin) needs to find out why, without digging through a job directory.
"""

from __future__ import annotations


class SlurmPrimitiveError(RuntimeError):
    """Base class: a primitive call that Slurm could not run to completion."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        slurm_state: str | None = None,
        output_tail: str = "",
    ) -> None:
        self.job_id = job_id
        self.slurm_state = slurm_state
        self.output_tail = output_tail
        text = message
        if output_tail.strip():
            tail = "\n".join("  | " + line for line in output_tail.rstrip().splitlines())
            text = f"{message}\n  job output (tail):\n{tail}"
        super().__init__(text)


class SlurmSubmitError(SlurmPrimitiveError):
    """sbatch refused the job (bad backend, partition, account, option...); nothing queued."""


class SlurmJobFailed(SlurmPrimitiveError):
    """The job ran and failed (qrun error, non-zero exit, out of memory, boot failure)."""


class SlurmJobTimeout(SlurmJobFailed):
    """Slurm killed the job at its time limit."""


class SlurmNodeFailure(SlurmJobFailed):
    """The node running the job failed."""


class SlurmJobCancelled(SlurmPrimitiveError):
    """The job was cancelled (job.cancel(), scancel, or an admin)."""


class DeadlockError(SlurmPrimitiveError):
    """Refused: the calling job already holds the QPU lanes the primitive job would wait for."""


class InFlightLimitError(SlurmPrimitiveError):
    """run() waited longer than ``submit_timeout`` for an in-flight slot."""
