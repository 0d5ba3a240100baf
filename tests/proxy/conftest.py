"""Start real `qproxy serve` processes in front of the session's emulator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

HERE = Path(__file__).parent


@dataclass
class Proxy:
    proc: subprocess.Popen[bytes]
    dir: Path
    env_file: Path
    audit_log: Path
    ledger: Path
    summary: Path
    config: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def root(self) -> str:
        return self.env["IAM_URL"]

    @property
    def api(self) -> str:
        return self.env["QISKIT_IBM_URL"]

    @property
    def token(self) -> str:
        return self.env["QISKIT_IBM_TOKEN"]

    def bearer(self) -> dict[str, str]:
        r = requests.post(
            self.root + "/identity/token",
            data={"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": self.token},
            timeout=10,
        )
        r.raise_for_status()
        return {"Authorization": "Bearer " + r.json()["access_token"]}

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def output(self) -> str:
        return (self.dir / "stdout").read_text() + (self.dir / "stderr").read_text()


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        env[key] = value
    return env


# resource name -> (upstream backend name, lanes): what the proxy tests configure by default
DEFAULT_RESOURCES = {"ibm_fez": ("fake_fez", 4), "ibm_torino": ("fake_torino", 1)}


def write_config(
    emulator: Any,
    d: Path,
    proxy_extra: str = "",
    resources: dict[str, tuple[str, int]] | None = None,
    upstream: str | None = None,
    secrets: dict[str, str] | None = None,
) -> Path:
    """``upstream``: the [upstreams.emu] table's body (default: the emulator's Runtime API);
    ``secrets``: more entries of the secrets file."""
    d.mkdir(parents=True, exist_ok=True)
    lines = "".join(f'{k} = "{v}"\n' for k, v in {"emu": emulator.api_key,
                                                   **(secrets or {})}.items())
    secrets_file = d / "secrets.toml"
    secrets_file.write_text(f"[secrets]\n{lines}")
    os.chmod(secrets_file, 0o600)
    conf = d / "qproxy.toml"
    conf.write_text(
        f"""
[paths]
state_dir = "state"
audit_dir = "audit"
secrets_file = "secrets.toml"
secrets_key_file = "secrets.key"

[proxy]
status_poll_seconds = 0.3
max_request_bytes = 2000000
{proxy_extra}

[upstreams.emu]
{upstream or f'url = "{emulator.url}/api/v1"'}
iam_url = "{emulator.url}"
instance = "{emulator.instance}"
api_key_secret = "emu"
"""
        + "".join(
            f'\n[resources."{name}"]\nupstream = "emu"\nbackend = "{backend}"\nlanes = {lanes}\n'
            for name, (backend, lanes) in (resources or DEFAULT_RESOURCES).items()
        )
    )
    return conf


def start_proxy(
    emulator: Any,
    d: Path,
    job_id: str,
    *,
    user: str = "alice",
    backend: str = "ibm_fez",
    lanes: int = 2,
    end_time: float | None = None,
    proxy_extra: str = "",
    resources: dict[str, tuple[str, int]] | None = None,
    upstream: str | None = None,
    secrets: dict[str, str] | None = None,
) -> Proxy:
    conf = write_config(emulator, d, proxy_extra, resources, upstream, secrets)
    env_file = d / "job" / "env"
    args = [
        sys.executable,
        "-m",
        "qproxy",
        "serve",
        "--config",
        str(conf),
        "--job-id",
        job_id,
        "--user",
        user,
        "--backend",
        backend,
        "--lanes",
        str(lanes),
        "--end-time",
        str(end_time if end_time is not None else time.time() + 3600),
        "--env-file",
        str(env_file),
    ]
    proc = subprocess.Popen(
        args,
        stdout=(d / "stdout").open("wb"),
        stderr=(d / "stderr").open("wb"),
        stdin=subprocess.DEVNULL,
    )
    p = Proxy(
        proc,
        d,
        env_file,
        d / "audit" / f"job-{job_id}.jsonl",
        d / "job" / "ledger.jsonl",
        d / "job" / "summary.json",
        conf,
    )
    deadline = time.time() + 30
    while not env_file.exists():
        if proc.poll() is not None or time.time() > deadline:
            p.stop(5) if proc.poll() is None else None
            raise RuntimeError("proxy did not start: " + p.output())
        time.sleep(0.05)
    p.env = read_env_file(env_file)
    return p


@pytest.fixture
def proxy_factory(emulator: Any, tmp_path: Path) -> Iterator[Any]:
    started: list[Proxy] = []

    def make(job_id: str = "1001", **kw: Any) -> Proxy:
        p = start_proxy(emulator, tmp_path / f"p{len(started)}", job_id, **kw)
        started.append(p)
        return p

    yield make
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


@pytest.fixture
def client_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Put exactly one proxy's env file into os.environ (for in-process client code)."""

    def use(p: Proxy | dict[str, str]) -> None:
        for k in list(os.environ):
            if k.startswith(("QISKIT_", "IAM_URL", "QPU_")):
                monkeypatch.delenv(k)
        monkeypatch.setenv("HOME", str(tmp_path))  # no saved accounts
        env = p if isinstance(p, dict) else read_env_file(p.env_file)
        for k, v in env.items():
            monkeypatch.setenv(k, v)

    return use
