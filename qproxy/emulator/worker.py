"""Simulation worker processes: one per lane, so lanes really run in parallel.

Aer jobs run from threads of one process were measured not to overlap here (two 14-qubit
noisy runs: 15.2 s sequential vs 14.1 s in two threads), so each lane's work goes to a
process pool instead. Each lane has a worker of its own (see jobs.py), so a worker only ever
serves one backend. A worker rebuilds the job from what crosses a process boundary cheaply
(program id, device names, the params JSON, the seed), keeps its own Device — and so its own
noise models — for its backend, and answers with plain data, never an exception object.
A worker exits by itself when the emulator process is gone (:func:`exit_with`).
"""

from __future__ import annotations

import os
import select
import threading
import time
from typing import Any

from .backends import Device
from .errors import ApiError
from .programs import enable_diagnostics, prepare
from .simulate import JobFailure

_DEVICES: dict[str, Device] = {}


def _device(name: str, fake_name: str) -> Device:
    dev = _DEVICES.get(name)
    if dev is None:
        dev = _DEVICES[name] = Device(name, fake_name)
    return dev


def exit_with(pid: int) -> None:
    """Pool initializer: end this worker when process ``pid`` (the emulator) ends.

    A pool's worker waits on its call queue, which it holds both ends of, so when the
    emulator is killed (SIGKILL, or a SIGTERM whose shutdown is cut short by one) its workers
    would wait forever, each holding its noise models (hundreds of MB for a 156-qubit
    device); and the forkserver stays up as long as any of them does."""
    threading.Thread(target=_exit_when_gone, args=(pid,), name="exit-with", daemon=True).start()


def _exit_when_gone(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)  # Linux >= 5.3: readable once the process has exited
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])
    else:
        while True:
            time.sleep(2)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                pass
    os._exit(0)


def warm_up(name: str, fake_name: str) -> bool:
    """Import qiskit/aer and build the backend's noise model before the first job."""
    _device(name, fake_name).noise_model()
    return True


def run_job(
    program_id: str, name: str, fake_name: str, params: Any, seed: int
) -> tuple[str, str, int]:
    """("ok", result text, 0) or ("failed", message, reason code)."""
    if program_id == "qproxy-blob":  # accepted at submit only if --diagnostics is on
        enable_diagnostics()
    try:
        result = prepare(program_id, _device(name, fake_name), params).run(seed)
    except JobFailure as exc:
        return "failed", exc.message, exc.code
    except ApiError as exc:  # validated at submit already; kept for safety
        return "failed", exc.message, int(exc.code) if str(exc.code).isdigit() else 1500
    return "ok", result, 0


def run_job_in_worker(
    program_id: str, name: str, fake_name: str, params: Any, seed: int
) -> tuple[int, tuple[str, str, int]]:
    """:func:`run_job`'s answer and the pid of the process that ran it (for the job's log)."""
    return os.getpid(), run_job(program_id, name, fake_name, params, seed)
