"""A real ``qproxy emulator`` process on a real socket, as the tests (and the benchmarks)
start it: where it listens, how to authenticate, and how to stop it."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from qproxy.clientenv import client_env

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



def api_headers(emu: EmulatorProcess) -> dict[str, str]:
    """A Bearer token for raw REST calls to an emulator (IAM exchange of its API key)."""
    import requests

    r = requests.post(
        emu.url + "/identity/token",
        data={"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": emu.api_key},
        timeout=10,
    )
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


# A job that runs long on purpose, for cancel and kill tests: a 12-qubit GHZ state has one
# entangled group beyond the density-matrix limit, so Aer runs noisy state-vector
# trajectories, ~2.9 ms per shot on fake_guadalupe_v2 here (1000 shots: 2.9 s), one core.
LONG_JOB_BACKEND = "fake_guadalupe_v2"
LONG_JOB_SHOTS = 20_000  # ~60 s if nothing stops it


def long_sampler_params(shots: int = LONG_JOB_SHOTS, qubits: int = 12) -> dict[str, Any]:
    """Sampler params (client JSON encoding) of that job, ISA for fake_guadalupe_v2."""
    from qiskit import QuantumCircuit
    from qiskit.transpiler.preset_passmanagers import generate_preset_pass_manager
    from qiskit_ibm_runtime import RuntimeEncoder
    from qiskit_ibm_runtime.fake_provider import FakeGuadalupeV2

    qc = QuantumCircuit(qubits)
    qc.h(0)
    for i in range(qubits - 1):
        qc.cx(i, i + 1)
    qc.measure_all()
    pm = generate_preset_pass_manager(
        optimization_level=1, backend=FakeGuadalupeV2(), seed_transpiler=1
    )
    doc = {"pubs": [(pm.run(qc), None, shots)], "version": 2, "support_qiskit": True,
           "options": {}}
    return dict(json.loads(json.dumps(doc, cls=RuntimeEncoder)))


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[0] != "Z":
            parents[int(entry)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
