"""Start and stop a job's ``qproxy serve`` process (root, detached from the hook)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "LANG": "C.UTF-8"}


def start(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """``setsid`` + stdio to a file: the proxy must outlive the prolog and must not hold the
    prolog's pipes open (slurmd would wait for them)."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "qproxy", "serve", *args],
            stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, close_fds=True,
            start_new_session=True, cwd="/", env=CLEAN_ENV,
        )
    finally:
        os.close(fd)


def is_our_proxy(pid: int, job_id: str) -> bool:
    """Guard against PID reuse: the process must be `qproxy serve --job-id <job_id>`."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    words = [a.decode(errors="replace") for a in argv]
    if "serve" not in words:
        return False
    return any(w == "--job-id" and i + 1 < len(words) and words[i + 1] == job_id
               for i, w in enumerate(words))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def stop(pid: int, job_id: str, grace: float = 15.0) -> str:
    """SIGTERM (graceful: the proxy cancels upstream work and writes its summary), then
    SIGKILL. Returns what happened: 'absent', 'terminated' or 'killed'."""
    if not is_our_proxy(pid, job_id):
        return "absent"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid):
            return "terminated"
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return "terminated"
    return "killed"


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            env[key.strip()] = value.strip()
    return env
