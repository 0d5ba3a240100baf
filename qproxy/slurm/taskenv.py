"""Task init helper (root, for each task of a QPU job): print the task's QPU environment as
KEY=VALUE lines for the SPANK plugin to set with overwrite=1; or print one line (the reason)
and exit 1, which makes the plugin fail the task with that message on the job's stderr.

The prolog does not wait for the proxy to be ready (that would add its start to every QPU
job's launch); the first task waits here, bounded, while Slurm was launching the step.
Stdlib only besides qproxy's small config/state modules: this runs once per task."""

from __future__ import annotations

import time

from qproxy.clientenv import CLIENT_ENV_NAMES, QRMI_RESOURCES, QRMI_TYPES, qrmi_env
from qproxy.config import Config
from qproxy.node.process import alive, is_our_proxy
from qproxy.slurm import proxyproc
from qproxy.slurm.state import JobState

# qpu_run (spank_hooks/task.c) kills task-env after 60 s; answer well before that.
MAX_WAIT_SECONDS = 45.0


# Every variable task init may set (qproxy.clientenv owns the client's names).
# (QRMI's per-resource names need no unsetting: without its resource list QRMI has none.)
QPU_ENV_NAMES = (*CLIENT_ENV_NAMES, "QPU_BACKEND", "QPU_LANES", QRMI_RESOURCES, QRMI_TYPES)


class NoQPU(Exception):
    pass


def task_env(config: Config, job_id: str) -> dict[str, str | None]:
    """The task's QPU variables (None: unset it); where the prolog noted that this job has no
    QPU by design (a heterogeneous job's component without lanes) every QPU variable is
    unset and there is no failure: ``srun --het-group=1`` in a batch script of the QPU
    component would otherwise hand it the other component's endpoint."""
    job = JobState.of(config, job_id)
    error = job.read_error()
    if error:
        raise NoQPU(f"job {job_id} cannot use the QPU: {error}")
    record = job.read_record()
    if record is None and job.read_note():
        return dict.fromkeys(QPU_ENV_NAMES)
    if record is None:
        raise NoQPU(f"no QPU proxy was started for job {job_id} on this node (the job prolog "
                    "did not run or failed); ask your admin")
    pid, spare, start = proxyproc.recorded(record)
    if not is_our_proxy(pid, job_id, spare, start):
        raise NoQPU(f"the QPU proxy of job {job_id} is no longer running")
    timeout = min(config.proxy.start_timeout_seconds, MAX_WAIT_SECONDS)
    try:
        proxy_env = proxyproc.wait_ready(job.env_file, pid, job_id, timeout, spare, start)
    except OSError:
        proxy_env = None
    if proxy_env is None:
        if is_our_proxy(pid, job_id, spare, start) and alive(pid):
            raise NoQPU(f"the QPU proxy of job {job_id} did not become ready in "
                        f"{timeout:.0f}s; ask your admin")
        raise NoQPU(f"the QPU proxy of job {job_id} exited at start or is no longer "
                    "running; ask your admin (proxy log in the node's qproxy state dir)")
    missing = [k for k in CLIENT_ENV_NAMES if k not in proxy_env]
    if missing:
        raise NoQPU(f"the QPU proxy of job {job_id} gave no {', '.join(missing)}")
    client = {k: proxy_env[k] for k in CLIENT_ENV_NAMES}
    client["QPU_BACKEND"] = record.resource
    client["QPU_LANES"] = str(record.lanes)
    # IBM's QRMI job code, through the same proxy and token (see qproxy.clientenv).
    left = int(record.end_time - time.time()) if record.end_time else None
    client.update(qrmi_env(record.resource, client, left))
    return dict(client)
