"""Shared fixtures: a real ``qproxy emulator`` process on a real socket, and the real local
Slurm cluster.

``emulator`` (session scope) is the one most tests use; ``start_emulator`` starts others with
custom arguments (e.g. one lane). The proxy tests reuse ``emulator`` as their upstream, so its
name and attributes (``url``, ``api_key``, ``instance``, ``env()``, ``proc``) are an interface.
``cluster`` (session scope, shared by tests/slurm and tests/slurm_mode) is ``scripts/cluster
up`` once, and down at the end unless QPROXY_KEEP_CLUSTER is set.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from qproxy.clientenv import client_env
from qproxy.emulator.reader import EmulatorReader
from tests.cluster import EMULATOR_URL, STATE, Cluster, cluster_cmd, cluster_env

EMULATOR_START_TIMEOUT = 120.0
TEST_INSTANCE = "crn:v1:bluemix:public:quantum-computing:us-east:a/qproxy-tests:emulator::"


@dataclass
class EmulatorProcess:
    """A running emulator: where it listens, how to authenticate, and its process."""

    url: str
    api_key: str
    instance: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """Environment for an unmodified ``QiskitRuntimeService()``."""
        return client_env(self.url, self.api_key, self.instance)

    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def launch_emulator(
    workdir: Path,
    *,
    backends: str = "fake_fez,fake_torino",
    lanes: str = "2",
    seed: int = 1234,
    extra_args: list[str] | None = None,
    timeout: float = EMULATOR_START_TIMEOUT,
) -> EmulatorProcess:
    """Start ``python -m qproxy emulator`` and wait for its ready file (fail with its stderr)."""
    workdir.mkdir(parents=True, exist_ok=True)
    api_key = "test-" + secrets.token_urlsafe(16)
    key_file = workdir / "api-keys"
    key_file.write_text(api_key + "\n")
    key_file.chmod(0o600)
    ready = workdir / "ready.json"
    log_path = workdir / "emulator.log"
    args = [
        sys.executable,
        "-m",
        "qproxy",
        "emulator",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--ready-file",
        str(ready),
        "--api-key-file",
        str(key_file),
        "--seed",
        str(seed),
        "--backends",
        backends,
        "--lanes",
        lanes,
        *(extra_args or []),
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            pytest.fail(
                f"emulator exited with {proc.returncode} before ready:\n{log_path.read_text()}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"emulator not ready after {timeout}s:\n{log_path.read_text()}")
        time.sleep(0.1)
    info = json.loads(ready.read_text())
    return EmulatorProcess(info["url"], api_key, TEST_INSTANCE, proc, log_path, args)


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
    c = Cluster(STATE, cluster_env(), up_seconds=time.monotonic() - t0)
    print(f"\ncluster up in {c.up_seconds:.1f}s", file=sys.stderr)
    yield c
    if not os.environ.get("QPROXY_KEEP_CLUSTER"):
        cluster_cmd("down", check=False)


@pytest.fixture(scope="session")
def qpu_cluster(cluster: Cluster) -> Cluster:
    """Flows that talk to a QPU need the cluster's emulator (and `qproxy serve`)."""
    if not cluster.emulator_ready():
        pytest.fail("the QPU emulator of the local cluster is not running (see .state/cluster)")
    return cluster


@pytest.fixture(scope="session")
def cluster_upstream(qpu_cluster: Cluster) -> EmulatorReader:
    """The cluster's emulator read with the centre's key: did a job stay behind?"""
    return EmulatorReader(EMULATOR_URL, qpu_cluster.vendor_secret())
