"""Integration option 2: each primitive call of a hybrid program is its own Slurm job.

``SlurmSampler`` / ``SlurmEstimator`` are qiskit V2 primitives; ``run()`` submits a short job
(``--gres=qpu:1 --q_backend=NAME`` or ``-L NAME:1``) running ``qrun`` on the payload, so the
program itself runs on classical nodes without holding a QPU lane. See docs/slurm_mode.md.
"""

from qproxy.client.slurm_mode.errors import (
    DeadlockError,
    InFlightLimitError,
    SlurmJobCancelled,
    SlurmJobFailed,
    SlurmJobTimeout,
    SlurmNodeFailure,
    SlurmPrimitiveError,
    SlurmSubmitError,
)
from qproxy.client.slurm_mode.job import SlurmJobStatus, SlurmPrimitiveJob
from qproxy.client.slurm_mode.primitives import SlurmEstimator, SlurmOptions, SlurmSampler

__all__ = [
    "DeadlockError",
    "InFlightLimitError",
    "SlurmEstimator",
    "SlurmJobCancelled",
    "SlurmJobFailed",
    "SlurmJobStatus",
    "SlurmJobTimeout",
    "SlurmNodeFailure",
    "SlurmOptions",
    "SlurmPrimitiveError",
    "SlurmPrimitiveJob",
    "SlurmSampler",
    "SlurmSubmitError",
]
