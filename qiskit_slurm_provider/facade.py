"""``Sampler`` / ``Estimator``: pick the primitive this process can use, then delegate to it.

Why decide at construction: the choice depends only on where the program runs (a QPU job's
task or not), which does not change while it runs, and a program that cannot reach any QPU
should hear so on its first line, not after its classical preprocessing.

The job-mode test needs every variable task init sets (and SLURM_JOB_ID): a login shell with
the user's own ``QISKIT_IBM_TOKEN`` for IBM Cloud, or ``QPU_BACKEND`` exported to name the
backend for slurm mode (examples/slurm_mode/job-slurm.sh), must not look like a QPU job.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from qiskit.primitives import BaseEstimatorV2, BasePrimitiveJob, BaseSamplerV2

MODES = ("job", "slurm")
# What task init sets in every task of a QPU job (qproxy.slurm.taskenv, qproxy.clientenv).
JOB_MARKERS = ("SLURM_JOB_ID", "QPU_BACKEND", "QPU_LANES", "QISKIT_IBM_URL", "QISKIT_IBM_TOKEN")
# qiskit-ibm-runtime's defaults, so both modes agree when the caller sets none.
RUNTIME_DEFAULT_SHOTS = 4096
RUNTIME_DEFAULT_PRECISION = 0.015625


class ProviderError(RuntimeError):
    """No QPU reachable from here, or the request does not fit this job; one line."""


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _in_qpu_job(env: Mapping[str, str]) -> bool:
    return all(env.get(k) for k in JOB_MARKERS)


def _choose_mode(mode: str | None, env: Mapping[str, str]) -> str:
    if mode is not None:
        if mode not in MODES:
            raise ProviderError(f"mode must be one of {', '.join(MODES)} (or None: automatic), "
                                f"not {mode!r}")
        if mode == "job" and not _in_qpu_job(env):
            raise ProviderError("mode='job' needs a Slurm job with a QPU: submit with "
                                "--q_backend=NAME and --gres=qpu:N or -L NAME:N")
        return mode
    return "job" if _in_qpu_job(env) else "slurm"


def _slurm_backend(backend: str | None, env: Mapping[str, str]) -> str:
    """backend=, else $QPU_BACKEND, else the one QPU of the centre's qproxy config."""
    if backend:
        return backend
    if env.get("QPU_BACKEND"):
        return env["QPU_BACKEND"]
    from qproxy.client.slurm_mode.guard import admin_config
    from qproxy.slurmcli.submit import Slurm

    config = admin_config(Slurm(), env.get("QPROXY_CONFIG"))
    names = sorted(config.resources) if config is not None else []
    if len(names) == 1:
        return names[0]
    offered = f" (this centre's QPUs: {', '.join(names)})" if names else ""
    raise ProviderError(f"which QPU? pass backend='NAME' or set QPU_BACKEND=NAME{offered}")


class _Facade:
    """What Sampler and Estimator share: the mode, the underlying primitive, the backend."""

    mode: str
    backend_name: str
    primitive: Any
    backend: Any  # the IBMBackend in job mode; None in slurm mode (no service here)

    def _setup(self, backend: str | None, mode: str | None,
               env: Mapping[str, str] | None) -> None:
        env = os.environ if env is None else env
        self.mode = _choose_mode(mode, env)
        if self.mode == "job":
            job_backend = env["QPU_BACKEND"]
            if backend and backend != job_backend:
                raise ProviderError(
                    f"this job's QPU is {job_backend!r} (--q_backend), not {backend!r}: use "
                    f"backend={job_backend!r}, or mode='slurm' to submit each call for "
                    f"{backend!r} as its own job")
            self.backend_name = job_backend
            self.backend = self._job_backend(job_backend)
        else:
            if shutil.which("sbatch", path=env.get("PATH")) is None:
                raise ProviderError(
                    "no QPU here: this process is not in a Slurm job with a QPU "
                    "(--q_backend with --gres=qpu:N or -L NAME:N) and Slurm's sbatch is not "
                    "on PATH to submit each call as its own job")
            self.backend_name = _slurm_backend(backend, env)
            self.backend = None

    @staticmethod
    def _job_backend(name: str) -> Any:
        from qiskit_ibm_runtime import QiskitRuntimeService

        try:
            return QiskitRuntimeService().backend(name)
        except Exception as exc:  # noqa: BLE001 - the client raises many types
            raise ProviderError(f"cannot reach this job's QPU {name!r} through its proxy "
                                f"(QISKIT_IBM_URL): {_short(exc)}") from None

    def pass_manager(self, optimization_level: int = 1) -> Any:
        """What turns circuits into ``isa_circuit``s for this primitive: qiskit's preset pass
        manager for the job's backend (job mode); in slurm mode the empty pass manager,
        because every primitive job transpiles for its device itself (qrun, or the
        client-side fast path once the device target is cached)."""
        from qiskit.transpiler import PassManager, generate_preset_pass_manager

        if self.backend is None:
            return PassManager()
        return generate_preset_pass_manager(optimization_level=optimization_level,
                                            backend=self.backend)

    @property
    def options(self) -> Any:
        return self.primitive.options

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend_name!r}, mode={self.mode!r})"


class Sampler(_Facade, BaseSamplerV2):
    """``Sampler()``: SamplerV2 on this job's QPU, or each ``run()`` as its own Slurm job.

    ``options``: a qiskit-ibm-runtime SamplerV2 options dict (both modes; ``default_shots``
    is honoured in both). Further keywords are slurm-mode options (SlurmOptions fields:
    workdir, partition, lanes_via, time_limit, ...), ignored in job mode so one program runs
    in both.
    """

    def __init__(self, backend: str | None = None, *, options: dict[str, Any] | None = None,
                 mode: str | None = None, env: Mapping[str, str] | None = None,
                 **slurm_options: Any) -> None:
        self._setup(backend, mode, env)
        options = dict(options or {})
        if self.mode == "job":
            from qiskit_ibm_runtime import SamplerV2

            with warnings.catch_warnings():  # the runtime deprecates V2 for its executor
                warnings.simplefilter("ignore", DeprecationWarning)
                self.primitive = SamplerV2(mode=self.backend, options=options)
        else:
            from qproxy.client.slurm_mode import SlurmSampler

            shots = options.get("default_shots") or RUNTIME_DEFAULT_SHOTS
            self.primitive = SlurmSampler(self.backend_name, default_shots=shots,
                                          options=options, **slurm_options)

    def run(self, pubs: Iterable[Any], *, shots: int | None = None) -> BasePrimitiveJob[Any, Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return self.primitive.run(pubs, shots=shots)


class Estimator(_Facade, BaseEstimatorV2):
    """``Estimator()``: EstimatorV2 on this job's QPU, or each ``run()`` as its own Slurm job.

    ``options``: a qiskit-ibm-runtime EstimatorV2 options dict (``default_precision`` is
    honoured in both modes); further keywords as for Sampler.
    """

    def __init__(self, backend: str | None = None, *, options: dict[str, Any] | None = None,
                 mode: str | None = None, env: Mapping[str, str] | None = None,
                 **slurm_options: Any) -> None:
        self._setup(backend, mode, env)
        options = dict(options or {})
        if self.mode == "job":
            from qiskit_ibm_runtime import EstimatorV2

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self.primitive = EstimatorV2(mode=self.backend, options=options)
        else:
            from qproxy.client.slurm_mode import SlurmEstimator

            precision = options.get("default_precision") or RUNTIME_DEFAULT_PRECISION
            self.primitive = SlurmEstimator(self.backend_name, default_precision=precision,
                                            options=options, **slurm_options)

    def run(self, pubs: Iterable[Any], *,
            precision: float | None = None) -> BasePrimitiveJob[Any, Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return self.primitive.run(pubs, precision=precision)
