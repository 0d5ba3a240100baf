"""A real ``qproxy emulator`` process on a real socket, as the tests (and the benchmarks)
start it: where it listens, how to authenticate, and how to stop it."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

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


