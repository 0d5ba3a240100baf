"""``SlurmSampler`` / ``SlurmEstimator``: each ``run()`` becomes its own short Slurm job.

Why: a hybrid program spends much of its time in classical work. Holding a QPU lane for the
whole program (``--gres=qpu:1`` on the program's job) leaves the lane idle during that work;
here the program runs without a lane and every primitive call is a job that asks Slurm for a
lane, runs ``qrun`` on the payload (the qrun payload format, qproxy.client.payload) and ends, so
Slurm hands the lane to whoever needs it next. Importing this module needs neither Slurm nor
the proxy; only ``run()`` calls ``sbatch``.
"""

from __future__ import annotations

import os
import shlex
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qiskit.primitives import BaseEstimatorV2, BaseSamplerV2
from qiskit.primitives.containers.estimator_pub import EstimatorPub
from qiskit.primitives.containers.sampler_pub import SamplerPub

from qproxy.client.payload import write_payload
from qproxy.client.slurm_mode import guard, targetcache
from qproxy.client.slurm_mode.errors import InFlightLimitError, SlurmSubmitError
from qproxy.client.slurm_mode.job import (
    EXIT_CODE,
    OUTPUT,
    PAYLOAD,
    RESULT,
    SlurmPrimitiveJob,
    _in_flight,
    _in_flight_lock,
)
from qproxy.slurmcli.run import SlurmError
from qproxy.slurmcli.submit import Slurm

WORKDIR_ENV = "QPROXY_SLURM_WORKDIR"
MAX_IN_FLIGHT_ENV = "QPROXY_SLURM_MAX_IN_FLIGHT"
DEFAULT_MAX_IN_FLIGHT = 4
DEFAULT_QRUN = (sys.executable, "-m", "qproxy.client.qrun")
FASTRUN = Path(__file__).with_name("fastrun.py")


def _default_workdir() -> Path:
    """$QPROXY_SLURM_WORKDIR, else ./.qproxy-slurm: on clusters the submit directory is
    (by convention) on the filesystem the compute nodes share; /tmp usually is not."""
    return Path(os.environ.get(WORKDIR_ENV) or Path.cwd() / ".qproxy-slurm")


def _default_max_in_flight() -> int:
    try:
        return max(1, int(os.environ.get(MAX_IN_FLIGHT_ENV, DEFAULT_MAX_IN_FLIGHT)))
    except ValueError:
        return DEFAULT_MAX_IN_FLIGHT


@dataclass
class SlurmOptions:
    """How primitive jobs are submitted. ``backend`` is the ``--q_backend`` name.

    lanes_via: "gres" asks ``--gres=qpu:1``, "license" asks ``-L BACKEND:1`` (the
        centre's mapping; licences make Slurm queue jobs per device).
    max_in_flight: most unfinished primitive jobs this process may have at once (over all
        Slurm primitives); run() blocks at the limit, raising InFlightLimitError after
        ``submit_timeout`` seconds (None: wait as long as it takes).
    qrun: the command the job runs (default: this interpreter's ``-m qproxy.client.qrun``, which
        must therefore be reachable from the compute nodes).
    fast_path: with the default qrun and transpile, the first job of a backend also caches
        the device's target in the work dir (for ``target_ttl`` s); later calls transpile
        on the client and the job runs the stdlib-only fastrun.py, so the lane is not held
        while the job imports qiskit.
    """

    backend: str
    workdir: Path = field(default_factory=_default_workdir)
    partition: str | None = None
    account: str | None = None
    time_limit: str | None = None  # sbatch --time, e.g. "10" (minutes) or "00:10:00"
    lanes_via: str = "gres"
    extra_args: Sequence[str] = ()
    qrun: Sequence[str] = DEFAULT_QRUN
    max_in_flight: int = field(default_factory=_default_max_in_flight)
    submit_timeout: float | None = None
    poll_interval: float = 0.1
    slurm_poll_interval: float = 1.0
    deadlock_guard: bool = True
    qproxy_config: str | None = None  # for the guard's lane counts (default: discovered)
    keep_files: bool = False
    transpile: bool = True
    fast_path: bool = True
    target_ttl: float = 3600.0

    def __post_init__(self) -> None:
        if self.lanes_via not in ("gres", "license"):
            raise ValueError("lanes_via must be 'gres' or 'license'")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self.workdir = Path(self.workdir)


class _SlurmPrimitive:
    """What sampler and estimator share: payload, sbatch, guard and the in-flight limit."""

    def __init__(self, backend: str, slurm_options: SlurmOptions | None, **kwargs: Any) -> None:
        if slurm_options is None:
            slurm_options = SlurmOptions(backend=backend, **kwargs)
        elif kwargs:
            raise TypeError("pass either slurm_options or keyword options, not both")
        self.slurm_options = slurm_options
        self._slurm = Slurm()
        self._guard_checked: str | None = None
        self._target: tuple[float, Any] | None = None
        self._submit_lock = threading.Lock()

    def _sbatch_args(self, jobdir: Path, kind: str) -> list[str]:
        o = self.slurm_options
        lane = ["--gres=qpu:1"] if o.lanes_via == "gres" else [f"--licenses={o.backend}:1"]
        args = [f"--job-name=qprim-{kind}", f"--output={jobdir / OUTPUT}",
                f"--chdir={jobdir}", *lane, f"--q_backend={o.backend}", "--no-requeue"]
        if o.partition:
            args.append(f"--partition={o.partition}")
        if o.account:
            args.append(f"--account={o.account}")
        if o.time_limit:
            args.append(f"--time={o.time_limit}")
        return [*args, *o.extra_args]

    def _check_guard(self) -> None:
        o = self.slurm_options
        job_id = os.environ.get("SLURM_JOB_ID", "")
        if not o.deadlock_guard or not job_id or self._guard_checked == job_id:
            return
        guard.check(self._slurm, o.backend, o.lanes_via, partition=o.partition,
                    config_path=o.qproxy_config)
        self._guard_checked = job_id  # the caller's allocation does not change

    def _wait_slot(self) -> None:
        o = self.slurm_options
        deadline = None if o.submit_timeout is None else time.monotonic() + o.submit_timeout
        while True:
            with _in_flight_lock:
                jobs = list(_in_flight)
            if len(jobs) < o.max_in_flight:
                return
            for job in jobs:  # refresh: finished jobs leave the set
                try:
                    job.status()
                except SlurmError:
                    pass
            with _in_flight_lock:
                if len(_in_flight) < o.max_in_flight:
                    return
            if deadline is not None and time.monotonic() > deadline:
                raise InFlightLimitError(
                    f"{len(jobs)} primitive jobs are still in flight (max_in_flight="
                    f"{o.max_in_flight}) after waiting {o.submit_timeout}s")
            time.sleep(max(o.slurm_poll_interval, 0.2))

    def _isa(self, pubs: list[Any], target: Any) -> list[Any]:
        raise NotImplementedError

    def _target_path(self) -> Path:
        return targetcache.path_for(self.slurm_options.workdir, self.slurm_options.backend)

    def _cached_target(self) -> Any:
        """The device target a previous job cached (same user's work dir), if fresh."""
        o = self.slurm_options
        if not (o.fast_path and o.transpile and tuple(o.qrun) == DEFAULT_QRUN):
            return None
        path = self._target_path()
        try:
            if time.time() - path.stat().st_mtime > o.target_ttl:
                return None
            if self._target is None or self._target[0] != path.stat().st_mtime:
                self._target = (path.stat().st_mtime, targetcache.read(path))
            return self._target[1]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # absent, stale, not ours, or not a cache: the job transpiles

    def _submit(self, kind: str, pubs: list[Any], **defaults: Any) -> SlurmPrimitiveJob:
        o = self.slurm_options
        self._check_guard()
        with self._submit_lock:
            self._wait_slot()
            o.workdir.mkdir(parents=True, exist_ok=True)
            jobdir = o.workdir / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
            jobdir.mkdir(mode=0o700)
            target = self._cached_target()
            transpile = o.transpile
            argv = [*o.qrun, kind, PAYLOAD, RESULT]
            if target is not None:  # fast path: ISA on the client, stdlib in the job
                pubs, transpile = self._isa(pubs, target), False
                # -I -S: stdlib only, so skip site (and its .pth imports) and the user's
                # PYTHON* variables: a faster start while the lane is held
                argv = [sys.executable, "-I", "-S", str(FASTRUN), kind, PAYLOAD, RESULT]
            elif o.fast_path and o.transpile and tuple(o.qrun) == DEFAULT_QRUN:
                self._target_path().parent.mkdir(mode=0o700, exist_ok=True)
                argv = [sys.executable, "-m", "qproxy.client.slurm_mode.jobmain", kind,
                        PAYLOAD, RESULT, str(self._target_path())]
            write_payload(jobdir / PAYLOAD, pubs, kind, backend=None,
                          options=getattr(self, "options", None) or None,
                          transpile=transpile, **defaults)
            script = jobdir / "job.sh"
            command = " ".join(shlex.quote(str(a)) for a in argv)
            # The exit code is written only without a result: once the result exists the
            # client may already be removing this directory, and a late write would keep it.
            script.write_text(
                "#!/bin/bash\n"
                "# qproxy slurm-mode primitive job: run one payload, record a failed exit code.\n"
                f"{command}\n"
                "rc=$?\n"
                f"[ -e {RESULT} ] || "
                f"{{ echo \"$rc\" > {EXIT_CODE}.tmp && mv -f {EXIT_CODE}.tmp {EXIT_CODE}; }}\n"
                "exit \"$rc\"\n")
            script.chmod(0o700)
            try:
                job_id = self._slurm.submit(self._sbatch_args(jobdir, kind), str(script))
            except SlurmError as exc:
                raise SlurmSubmitError(
                    f"could not submit the {kind} job for '{o.backend}': {exc}") from None
            job = SlurmPrimitiveJob(
                job_id, jobdir, self._slurm, kind=kind, backend=o.backend,
                poll_interval=o.poll_interval, slurm_poll_interval=o.slurm_poll_interval,
                keep_files=o.keep_files, fast_path=target is not None)
            with _in_flight_lock:
                _in_flight.add(job)
            return job


def _pass_manager(target: Any) -> Any:
    from qiskit.transpiler import generate_preset_pass_manager

    return generate_preset_pass_manager(optimization_level=1, target=target)


class SlurmSampler(_SlurmPrimitive, BaseSamplerV2):
    """A SamplerV2 whose every ``run()`` is a Slurm job asking for one lane of ``backend``.

    ``options`` is a qiskit-ibm-runtime SamplerV2 options dict, passed to qrun unchanged.
    Further keywords are SlurmOptions fields (workdir, partition, time_limit, ...).
    """

    def __init__(
        self,
        backend: str,
        *,
        default_shots: int = 1024,
        options: dict[str, Any] | None = None,
        slurm_options: SlurmOptions | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backend, slurm_options, **kwargs)
        self.default_shots = default_shots
        self.options = dict(options or {})

    def _isa(self, pubs: list[Any], target: Any) -> list[Any]:
        pm = _pass_manager(target)  # what qrun does, on the client
        return [SamplerPub.coerce((pm.run(p.circuit), p.parameter_values, p.shots))
                for p in pubs]

    def run(
        self, pubs: Iterable[Any], *, shots: int | None = None
    ) -> SlurmPrimitiveJob:
        shots = self.default_shots if shots is None else shots
        coerced = [SamplerPub.coerce(pub, shots) for pub in pubs]  # fail here, not in the job
        if not coerced:
            raise ValueError("no pubs given")
        return self._submit("sample", coerced, shots=shots)


class SlurmEstimator(_SlurmPrimitive, BaseEstimatorV2):
    """An EstimatorV2 whose every ``run()`` is a Slurm job asking for one lane of ``backend``.

    ``options`` is a qiskit-ibm-runtime EstimatorV2 options dict, passed to qrun unchanged.
    Further keywords are SlurmOptions fields (workdir, partition, time_limit, ...).
    """

    def __init__(
        self,
        backend: str,
        *,
        default_precision: float = 0.015625,
        options: dict[str, Any] | None = None,
        slurm_options: SlurmOptions | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backend, slurm_options, **kwargs)
        self.default_precision = default_precision
        self.options = dict(options or {})

    def _isa(self, pubs: list[Any], target: Any) -> list[Any]:
        pm = _pass_manager(target)  # what qrun does, on the client
        out = []
        for p in pubs:
            circuit = pm.run(p.circuit)
            obs = p.observables.apply_layout(circuit.layout)
            out.append(EstimatorPub.coerce((circuit, obs, p.parameter_values, p.precision)))
        return out

    def run(
        self, pubs: Iterable[Any], *, precision: float | None = None
    ) -> SlurmPrimitiveJob:
        precision = self.default_precision if precision is None else precision
        coerced = [EstimatorPub.coerce(pub, precision) for pub in pubs]
        if not coerced:
            raise ValueError("no pubs given")
        return self._submit("estimate", coerced, precision=precision)
