"""Deadlock guard: refuse a primitive job that could never start while its caller runs.

A hybrid program that itself runs in a Slurm job holding QPU lanes, and then submits a
primitive job asking for a lane, waits for itself: Slurm keeps the new job PENDING (or the
node's lease refuses it) until the caller releases its lanes, which it never does because it
is waiting. The rule (docs/slurm_mode.md) uses only what Slurm says about the caller's job —
``$SLURM_JOB_ID`` merely names which job to ask about, and a job that is not live or not
the caller's own is ignored. Let J be that job, B the backend asked for:

1. licence mapping: J holds ``B:n`` licences and n >= Slurm's licence total for B;
2. GRES mapping: J holds ``qpu:n`` GRES and n >= all qpu GRES on the partition's nodes;
3. any mapping: J holds n lanes *of B* (licence ``B:n``, or ``qpu:n`` GRES that the prolog
   recorded as ``qpu backend=B`` in J's AdminComment, which users cannot set) and n >= B's
   lane count in the qproxy admin config (licence total when the config is unreadable).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from qproxy.client.slurm_mode.errors import DeadlockError
from qproxy.slurmcli.record import JobRecord
from qproxy.slurmcli.run import SlurmError
from qproxy.slurmcli.states import RUNNING_STATES
from qproxy.slurmcli.submit import Slurm

if TYPE_CHECKING:
    from qproxy.config import Config

_ADMIN = re.compile(r"qpu backend=(\S+)")


def admin_config(slurm: Slurm, config_path: str | Path | None = None) -> Config | None:
    """The qproxy admin config (world-readable): the explicit path, $QPROXY_CONFIG, the
    plugin's plugstack ``config=``, /etc/qproxy/qproxy.toml; None when unreadable."""
    from qproxy.config import DEFAULT_CONFIG_PATH, ConfigError, load

    candidates = [config_path, os.environ.get("QPROXY_CONFIG")]
    for path in candidates:
        if path:
            break
    else:
        try:
            path = slurm.plugstack_qproxy_config()
        except SlurmError:
            path = None
        path = path or DEFAULT_CONFIG_PATH
    try:
        return load(path)
    except (ConfigError, OSError):
        return None


def backend_lanes(slurm: Slurm, backend: str, config_path: str | Path | None) -> int | None:
    """B's lane count: the qproxy admin config (admin_config), else Slurm's licence total."""
    config = admin_config(slurm, config_path)
    res = config.resources.get(backend) if config is not None else None
    if res is not None:
        return res.lanes
    return slurm.license_total(backend)


def held_of_backend(job: JobRecord, backend: str) -> int:
    if job.licenses.get(backend):
        return job.licenses[backend]
    m = _ADMIN.search(job.admin_comment)
    if m and m.group(1) == backend:
        return job.gres_qpu
    return 0


def check(
    slurm: Slurm,
    backend: str,
    lanes_via: str,
    *,
    partition: str | None = None,
    config_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Raise DeadlockError if the calling job holds the lanes the new job would wait for."""
    env = os.environ if env is None else env
    job_id = env.get("SLURM_JOB_ID")
    if not job_id:
        return
    try:
        job = slurm.show(job_id)
    except SlurmError:
        return  # cannot tell: the submit will report a broken Slurm itself
    if job is None or job.state not in RUNNING_STATES:
        return
    if job.user_id is not None and job.user_id != os.getuid():
        return  # not the caller's job: it cannot be waiting for itself
    why: str | None = None
    if lanes_via == "license" and job.licenses.get(backend):
        total = slurm.license_total(backend)
        if total is not None and job.licenses[backend] >= total:
            why = (f"holds {job.licenses[backend]} of the {total} '{backend}' licences, "
                   f"so a job asking -L {backend}:1 stays pending until job {job_id} ends")
    if why is None and lanes_via == "gres" and job.gres_qpu:
        total = slurm.gres_qpu_total(partition)
        if total and job.gres_qpu >= total:
            why = (f"holds {job.gres_qpu} of the {total} qpu GRES in the partition, so a "
                   f"job asking --gres=qpu:1 stays pending until job {job_id} ends")
    held = held_of_backend(job, backend)
    if why is None and held:
        lanes = backend_lanes(slurm, backend, config_path)
        if lanes is not None and held >= lanes:
            why = (f"holds {held} of the {lanes} lanes of QPU '{backend}', so a primitive "
                   f"job needing one of them could not get a lane until job {job_id} ends")
    if why:
        raise DeadlockError(
            f"refusing to submit a primitive job for '{backend}': this program runs in Slurm "
            f"job {job_id}, which {why} (deadlock). Run the program in a job without QPU "
            f"lanes (no --gres=qpu / -L {backend}), or use qiskit_ibm_runtime's primitives "
            f"directly inside this job.",
            job_id=job_id,
            slurm_state=job.state,
        )
