"""Shared pieces of the benchmarks: process launchers, alternating rounds, statistics.

Every benchmark compares a subject against a baseline measured in the same run, alternating
baseline and subject rounds and reporting medians, because these machines are shared and
noisy: an absolute figure from one moment means little, a ratio from interleaved rounds does.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qproxy.emulator.reader import EmulatorReader

REPO = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) — enough for benchmark reporting."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def alternate(
    baseline: Callable[[], float], subject: Callable[[], float], rounds: int
) -> tuple[list[float], list[float]]:
    """Run baseline and subject in alternation (ABAB..., starting side flipped each round)."""
    base, subj = [], []
    for i in range(rounds):
        if i % 2 == 0:
            base.append(baseline())
            subj.append(subject())
        else:
            subj.append(subject())
            base.append(baseline())
    return base, subj


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def status_kb(pid: int, field: str) -> int:
    """A kB figure of /proc/PID/status (VmRSS, VmHWM, ...)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_kb(pid: int) -> int:
    return status_kb(pid, "VmRSS")


def wait_for_file(path: Path, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > 0:
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        time.sleep(0.01)
    raise TimeoutError(f"{path} did not appear within {timeout}s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Emulator:
    url: str
    api_key: str
    instance: str
    proc: subprocess.Popen[bytes]

    def env(self) -> dict[str, str]:
        from qproxy.clientenv import client_env

        return client_env(self.url, self.api_key, self.instance)


INSTANCE = "crn:v1:bluemix:public:quantum-computing:us-east:a/bench:emulator::"


@contextmanager
def emulator(workdir: Path, *args: str) -> Iterator[Emulator]:
    key = secrets.token_urlsafe(32)
    keyfile = workdir / f"emu-{os.getpid()}-{time.monotonic_ns()}.key"
    keyfile.write_text(key + "\n")
    keyfile.chmod(0o600)
    ready = keyfile.with_suffix(".ready")
    with open(workdir / "emulator.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qproxy", "emulator", "--host", "127.0.0.1", "--port", "0",
             "--ready-file", str(ready), "--api-key-file", str(keyfile), *args],
            stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        wait_for_file(ready, 120, proc)
        info = json.loads(ready.read_text())
        # its lane workers import qiskit and build noise models for ~20-30 s of CPU after it
        # listens: measuring the proxy meanwhile measures that contention on 2 cores
        EmulatorReader(info["url"], key).wait_warm(300)
        yield Emulator(info["url"], key, INSTANCE, proc)
    finally:
        stop(proc)


@dataclass
class Proxy:
    url: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    ready_seconds: float
    workdir: Path = field(default_factory=Path)

    @property
    def token(self) -> str:
        return self.env["QISKIT_IBM_TOKEN"]


def write_config(workdir: Path, emu: Emulator, lanes: int = 2, **proxy: Any) -> Path:
    """The node's config; a random cluster key beside it (relays: ``relay()``)."""
    cluster_key = workdir / "cluster.key"
    if not cluster_key.exists():
        cluster_key.write_bytes(secrets.token_bytes(48))
        cluster_key.chmod(0o600)
    secrets_file = workdir / "secrets.toml"
    secrets_file.write_text(f'[secrets]\nemulator = "{emu.api_key}"\n')
    secrets_file.chmod(0o600)
    proxy_lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in proxy.items())
    cfg = workdir / "qproxy.toml"
    cfg.write_text(
        f"""[paths]
state_dir = "{workdir}/state"
audit_dir = "{workdir}/audit"
secrets_file = "{secrets_file}"
secrets_key_file = "{workdir}/secrets.key"
cluster_key_file = "{cluster_key}"

[proxy]
{proxy_lines}
[upstreams.emulator]
url = "{emu.url}/api/v1"
iam_url = "{emu.url}"
instance = "{emu.instance}"
api_key_secret = "emulator"

[resources.ibm_fez]
upstream = "emulator"
backend = "fake_fez"
lanes = {lanes}
"""
    )
    return cfg


@contextmanager
def proxy(cfg: Path, workdir: Path, job_id: str = "1", lanes: int = 2,
          extra_env: dict[str, str] | None = None, args: tuple[str, ...] = ()
          ) -> Iterator[Proxy]:
    jobdir = Path(tempfile.mkdtemp(prefix=f"job{job_id}-", dir=workdir))
    env_file = jobdir / "env"
    t0 = time.perf_counter()
    with open(jobdir / "proxy.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qproxy", "serve", "--config", str(cfg), "--job-id", job_id,
             "--user", "bench", "--backend", "ibm_fez", "--lanes", str(lanes),
             "--end-time", str(int(time.time()) + 3600), "--env-file", str(env_file),
             "--audit-log", str(jobdir / "audit.jsonl"), *args],
            stdout=subprocess.DEVNULL, stderr=log,
            env={**os.environ, **(extra_env or {})},
        )
    try:
        wait_for_file(env_file, 30, proc)
        ready = time.perf_counter() - t0
        env = dict(
            line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line
        )
        url = env["IAM_URL"]
        yield Proxy(url, env, proc, ready, jobdir)
    finally:
        stop(proc)


@contextmanager
def relay(cfg: Path, workdir: Path, job_id: str = "1", lanes: int = 2) -> Iterator[Proxy]:
    """A multi-node job's proxy on a node but its first (``qproxy serve --relay-to``) in
    front of the job's primary (``--relay-listen``), both on this host: what a job on the
    other node talks to. Yields the relay."""
    from qproxy.proxy.relay.auth import RELAY_PORT_ENV

    with proxy(cfg, workdir, job_id, lanes, args=("--relay-listen", "127.0.0.1")) as primary:
        target = f"127.0.0.1:{primary.env[RELAY_PORT_ENV]}"
        with proxy(cfg, workdir, job_id, lanes, args=("--relay-to", target,
                                                      "--node", "node2")) as px:
            yield px
