"""Start and stop a job's ``qproxy serve`` process (root, detached from the hook), and wait
for its env file. Which process is a job's proxy: ``qproxy.node.process.is_our_proxy``."""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from qproxy.files import open_append
from qproxy.node import cgroup
from qproxy.node.envfile import read_env_file
from qproxy.node.process import alive, is_our_proxy
from qproxy.records import ProxyRecord

if TYPE_CHECKING:  # task-env (once per task) never starts a process
    import subprocess

CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "LANG": "C.UTF-8"}


def launch(args: list[str], log_path: Path, env: Mapping[str, str] | None = None,
           preexec_fn: Callable[[], None] | None = None,
           cgroup_name: str = "") -> subprocess.Popen[bytes]:
    """``qproxy serve ARGS`` detached: ``setsid`` + stdio to a 0600 log file, cwd ``/``, in
    the cgroup CGROUP_NAME (``[proxy].cgroup``, see ``qproxy.node.cgroup``: never the cgroup
    of the job whose prolog runs this; "" stays). A job's proxy (``start``) and a spare
    (``qproxy.slurm.spares.ensure``) must outlive the prolog and must not hold the prolog's
    pipes open (slurmd would wait for them)."""
    import subprocess

    def child() -> None:  # after the fork, before the exec: nothing of it runs in the job
        for problem in cgroup.enter(cgroup_name) if cgroup_name else ():
            os.write(2, f"qproxy: {problem}\n".encode())
        if preexec_fn is not None:
            preexec_fn()

    fd = open_append(log_path)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "qproxy", "serve", *args],
            stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, close_fds=True,
            start_new_session=True, cwd="/", env=CLEAN_ENV if env is None else env,
            preexec_fn=child,
        )
    finally:
        os.close(fd)


def start(args: list[str], log_path: Path, cgroup_name: str = "") -> subprocess.Popen[bytes]:
    """A job's proxy, with a clean environment, in CGROUP_NAME ("" stays)."""
    return launch(args, log_path, cgroup_name=cgroup_name)


class Recorded(NamedTuple):
    """The proxy a job's connection record names: what the PID-reuse guard checks."""

    pid: int
    spare: str | None = None  # the spare that forked it
    start: int | None = None  # its /proc start time (records of older qproxy have none)


def recorded(record: ProxyRecord) -> Recorded:
    return Recorded(record.pid, record.spare, record.start_ticks)


def _wait_exit(pidfd: int | None, pid: int, timeout: float) -> bool:
    """True once pid has exited (a zombie counts), within timeout. With a pidfd the kernel
    wakes us the moment it exits; else poll /proc in short steps."""
    deadline = time.monotonic() + timeout
    if pidfd is not None:
        p = select.poll()
        p.register(pidfd, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if p.poll(max(0, int(left * 1000) + 1)) or not alive(pid):
                return True
            if left <= 0:
                return False
    delay = 0.002
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return not alive(pid)


def stop(pid: int, job_id: str, grace: float = 15.0, spare: str | None = None,
         start: int | None = None) -> str:
    """SIGTERM (graceful: the proxy cancels upstream work and writes its summary), then
    SIGKILL. Returns what happened: 'absent', 'terminated' or 'killed'.

    A pidfd taken before the cmdline check pins the process, so a PID reused in between
    can never be signalled."""
    pidfd: int | None = None
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return "absent"
    except (AttributeError, OSError):
        pidfd = None
    try:
        if not is_our_proxy(pid, job_id, spare, start):
            return "absent"
        _signal(pidfd, pid, signal.SIGTERM)
        if _wait_exit(pidfd, pid, grace):
            return "terminated"
        try:
            _signal(pidfd, pid, signal.SIGKILL)
        except ProcessLookupError:
            return "terminated"
        return "killed"
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _signal(pidfd: int | None, pid: int, sig: int) -> None:
    if pidfd is not None:
        signal.pidfd_send_signal(pidfd, sig)
    else:
        os.kill(pid, sig)


def wait_ready(path: Path, pid: int, job_id: str, timeout: float,
               spare: str | None = None, start: int | None = None) -> dict[str, str] | None:
    """The proxy's env file once it exists; None if the proxy is gone or the time is up."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            return read_env_file(path)
        except FileNotFoundError:
            pass
        ours = is_our_proxy(pid, job_id, spare, start) and alive(pid)
        if not ours or time.monotonic() > deadline:
            try:  # it may have written the file and died since the first look
                return read_env_file(path)
            except FileNotFoundError:
                return None
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
