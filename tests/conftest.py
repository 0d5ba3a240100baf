"""Shared fixtures: a real ``qproxy emulator`` process on a real socket, and the real local
Slurm cluster.

``emulator`` (session scope) is the one most tests use; ``start_emulator`` starts others with
custom arguments (e.g. one lane). The proxy tests reuse ``emulator`` as their upstream, so its
name and attributes (``url``, ``api_key``, ``instance``, ``env()``, ``proc``) are an interface.
``cluster`` (session scope, shared by tests/slurm and tests/slurm_mode) is ``scripts/cluster
up`` once, and down at the end unless QPROXY_KEEP_CLUSTER is set.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from qproxy.emulator.reader import EmulatorReader
from tests.support.cluster import EMULATOR_URL, SETTINGS, Cluster, cluster_cmd, cluster_env
from tests.support.emulator import EmulatorProcess, launch_emulator


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """The shared emulator: fake_fez and fake_torino, 2 lanes each, seed 1234."""
    emu = launch_emulator(tmp_path_factory.mktemp("emulator"))
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(scope="session")
def start_emulator(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., EmulatorProcess]]:
    """Factory for extra emulators with custom arguments; all are stopped at session end."""
    started: list[EmulatorProcess] = []

    def start(**kwargs: object) -> EmulatorProcess:
        emu = launch_emulator(tmp_path_factory.mktemp("emulator-extra"), **kwargs)  # type: ignore[arg-type]
        started.append(emu)
        return emu

    try:
        yield start
    finally:
        for emu in started:
            emu.stop()


@pytest.fixture
def client_env_for(monkeypatch: pytest.MonkeyPatch) -> Callable[[EmulatorProcess], None]:
    """Point the process environment (what ``QiskitRuntimeService()`` reads) at an emulator."""

    def apply(emu: EmulatorProcess) -> None:
        for name in ("QISKIT_IBM_TOKEN", "QISKIT_IBM_URL", "QISKIT_IBM_INSTANCE", "IAM_URL"):
            monkeypatch.delenv(name, raising=False)
        for name, value in emu.env().items():
            monkeypatch.setenv(name, value)

    return apply


@pytest.fixture
def service(emulator: EmulatorProcess, client_env_for: Callable[[EmulatorProcess], None]):  # type: ignore[no-untyped-def]
    """An unmodified ``QiskitRuntimeService()`` built from the environment only."""
    from qiskit_ibm_runtime import QiskitRuntimeService

    client_env_for(emulator)
    return QiskitRuntimeService()


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("the Slurm tests start a real cluster and need root")
    t0 = time.monotonic()
    cluster_cmd("up", check=True, stdout=subprocess.DEVNULL)
    c = Cluster(SETTINGS, cluster_env(), up_seconds=time.monotonic() - t0)
    print(f"\ncluster up in {c.up_seconds:.1f}s", file=sys.stderr)
    yield c
    if not os.environ.get("QPROXY_KEEP_CLUSTER"):
        cluster_cmd("down", check=False)


@pytest.fixture(scope="session")
def qpu_cluster(cluster: Cluster) -> Cluster:
    """Flows that talk to a QPU need the cluster's emulator (and `qproxy serve`)."""
    if not cluster.emulator_ready():
        pytest.fail(f"the QPU emulator of the local cluster is not running (see {cluster.state})")
    return cluster


@pytest.fixture(scope="session")
def cluster_upstream(qpu_cluster: Cluster) -> EmulatorReader:
    """The cluster's emulator read with the centre's key: did a job stay behind?"""
    return EmulatorReader(EMULATOR_URL, qpu_cluster.vendor_secret())
