"""qiskit_slurm_provider without a cluster: which mode a process gets, which backend, and the
one-line errors when neither mode is possible (both modes run for real in
tests/slurm/test_provider.py and tests/slurm_mode/test_provider.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from qiskit import QuantumCircuit
from qiskit.primitives import BaseEstimatorV2, BaseSamplerV2

from qiskit_slurm_provider import Estimator, ProviderError, Sampler
from qproxy.client.slurm_mode import SlurmEstimator, SlurmSampler

CONF = Path(__file__).resolve().parents[2] / "conf" / "qproxy.toml"
JOB = {"SLURM_JOB_ID": "7", "QPU_BACKEND": "ibm_fez", "QPU_LANES": "1",
       "QISKIT_IBM_URL": "http://127.0.0.1:1/experimental/api/v1", "QISKIT_IBM_TOKEN": "t"}


@pytest.fixture
def slurm_path(tmp_path: Path) -> str:
    """A PATH whose only sbatch is a stub (construction never submits anything)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    return str(bin_dir)


def _one_line(exc: pytest.ExceptionInfo[ProviderError]) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.strip() == text, text
    return text


def test_slurm_mode_off_a_qpu_job(slurm_path: str, tmp_path: Path) -> None:
    env = {"PATH": slurm_path, "QPROXY_CONFIG": str(CONF)}
    s = Sampler("ibm_torino", env=env, workdir=tmp_path / "w", lanes_via="license")
    assert (s.mode, s.backend_name, s.backend) == ("slurm", "ibm_torino", None)
    assert isinstance(s, BaseSamplerV2) and isinstance(s.primitive, SlurmSampler)
    assert s.primitive.slurm_options.lanes_via == "license"
    assert s.primitive.default_shots == 4096  # qiskit-ibm-runtime's default in both modes
    assert Sampler("ibm_fez", env=env, options={"default_shots": 100}).primitive.default_shots \
        == 100
    e = Estimator(env=dict(env, QPU_BACKEND="ibm_fez"))  # QPU_BACKEND names it off a job
    assert isinstance(e, BaseEstimatorV2) and isinstance(e.primitive, SlurmEstimator)
    assert e.backend_name == "ibm_fez" and e.primitive.default_precision == 0.015625
    bell = QuantumCircuit(2)
    bell.h(0)
    bell.cx(0, 1)
    assert s.pass_manager().run(bell) == bell  # the primitive jobs transpile themselves
    # QPU_BACKEND + the user's own IBM Cloud token is not a QPU job (no QPU_LANES, job id)
    cloud = dict(env, QPU_BACKEND="ibm_fez", QISKIT_IBM_TOKEN="mine",
                 QISKIT_IBM_URL="https://cloud.ibm.com")
    assert Sampler(env=cloud).mode == "slurm"


def test_backend_from_the_centres_config(slurm_path: str, tmp_path: Path) -> None:
    env = {"PATH": slurm_path, "QPROXY_CONFIG": str(CONF)}
    with pytest.raises(ProviderError) as exc:
        Sampler(env=env)
    assert "pass backend='NAME' or set QPU_BACKEND=NAME (this centre's QPUs: ibm_fez, " \
           "ibm_torino)" in _one_line(exc)
    text = CONF.read_text()
    one = text[:text.index("[resources.ibm_torino]")]
    assert "[resources.ibm_fez]" in one
    (tmp_path / "one.toml").write_text(one)
    assert Sampler(env=dict(env, QPROXY_CONFIG=str(tmp_path / "one.toml"))).backend_name \
        == "ibm_fez"


def test_errors_are_one_line(slurm_path: str) -> None:
    with pytest.raises(ProviderError) as exc:
        Sampler(env={"PATH": "/nonexistent"})
    assert _one_line(exc).startswith("no QPU here: this process is not in a Slurm job with a QPU")
    with pytest.raises(ProviderError) as exc:
        Estimator(mode="job", env={"PATH": slurm_path})
    assert "mode='job' needs a Slurm job with a QPU" in _one_line(exc)
    with pytest.raises(ProviderError) as exc:
        Sampler(mode="cloud", env={"PATH": slurm_path})
    assert "mode must be one of job, slurm" in _one_line(exc)
    with pytest.raises(ProviderError) as exc:  # inside an ibm_fez job, before any request
        Sampler("ibm_torino", env=JOB)
    assert "this job's QPU is 'ibm_fez' (--q_backend), not 'ibm_torino'" in _one_line(exc)
    with pytest.raises(ProviderError) as exc:  # task env present, proxy gone
        Sampler(env=JOB)
    assert "cannot reach this job's QPU 'ibm_fez' through its proxy" in _one_line(exc)


def test_uncaught_error_is_short() -> None:
    """What a user sees when their program dies on it: the message last, no exception chain
    from the client's internals."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QPU_", "SLURM_"))}
    env["PATH"] = "/nonexistent"
    proc = subprocess.run([sys.executable, "-c",
                           "from qiskit_slurm_provider import Sampler\nSampler()"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("qiskit_slurm_provider.facade.ProviderError: no QPU here:"), \
        proc.stderr
    assert proc.stderr.count("Traceback") == 1 and "During handling" not in proc.stderr
    assert "direct cause" not in proc.stderr and len(lines) <= 12, proc.stderr
