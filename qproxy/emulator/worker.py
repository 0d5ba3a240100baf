"""Simulation worker processes: one per lane, so lanes really run in parallel.

Aer jobs run from threads of one process were measured not to overlap here (two 14-qubit
noisy runs: 15.2 s sequential vs 14.1 s in two threads), so each lane's work goes to a
process pool instead. Each lane has a worker of its own (see jobs.py), so a worker only ever
serves one backend. A worker rebuilds the job from what crosses a process boundary cheaply
(program id, device names, the params JSON, the seed), keeps its own Device — and so its own
noise models — for its backend, and answers with plain data, never an exception object.

Each job runs in a fork of the lane's warm worker (:func:`run_job_in_worker`), so that
cancelling a job can stop its simulation at once: the worker kills the fork and is free for
the next job with its noise models intact. Aer holds the GIL for a whole run (a 22.8 s noisy
14-qubit run let a 50 ms ticker thread run twice), so nothing inside the simulating process
can notice a cancel, and killing the warm worker itself would cost the lane a new warm-up
(~9 s for fake_fez: 2 s imports, 7 s noise model). Forking the 550 MB warm worker costs
~50 ms; each job rebuilds its restricted noise models (~11 ms per qubit set on fake_fez).

Workers die with the emulator, however it dies: the kernel SIGKILLs them when their parent
dies (PR_SET_PDEATHSIG, :func:`die_with_parent`): the lane worker when the emulator process
dies, a job's fork when its lane worker dies. A watcher thread (:func:`exit_with`) is only a
fallback where prctl is unavailable: it cannot run while Aer holds the GIL, which is how
orphaned workers of a SIGKILLed emulator went on simulating for 50 minutes.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import select
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from .backends import Device
from .errors import ApiError
from .programs import enable_diagnostics, prepare
from .simulate import JobFailure

_DEVICES: dict[str, Device] = {}
_CANCEL: Connection | None = None  # job serials to cancel, from the emulator (init_worker)
PR_SET_PDEATHSIG = 1

Outcome = tuple[str, str, int]  # ("ok", result, 0) | ("failed", message, code) | ("cancelled",..)


def _device(name: str, fake_name: str) -> Device:
    dev = _DEVICES.get(name)
    if dev is None:
        dev = _DEVICES[name] = Device(name, fake_name)
    return dev


def die_with_parent(parent_pid: int) -> bool:
    """Have the kernel SIGKILL this process when its parent dies; exit now if it already has.

    The death signal fires when the parent *thread* that forked us exits: the emulator
    starts its lane workers from its event loop (main) thread, and a lane worker forks job
    processes from its main thread, both of which live as long as their process. False if
    prctl is unavailable (not Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = bool(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        ok = False
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(0)
    return ok


def init_worker(emulator_pid: int, cancel: Connection) -> None:
    """Pool initializer of a lane worker: die with the emulator, listen for cancels."""
    global _CANCEL
    _CANCEL = cancel
    if not die_with_parent(emulator_pid):
        exit_with(emulator_pid)


def exit_with(pid: int) -> None:
    """Fallback without prctl: end this worker when process ``pid`` (the emulator) ends.

    A pool's worker waits on its call queue, which it holds both ends of, so when the
    emulator is killed its workers would wait forever, each holding its noise models
    (hundreds of MB for a 156-qubit device). Only works between simulations (GIL)."""
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


def warm_up(name: str, fake_name: str) -> int:
    """Import qiskit/aer and build the backend's noise model before the first job; the
    worker's pid (the emulator kills its workers by pid when it stops)."""
    _device(name, fake_name).noise_model()
    return os.getpid()


def run_job(program_id: str, name: str, fake_name: str, params: Any, seed: int) -> Outcome:
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
    program_id: str, name: str, fake_name: str, params: Any, seed: int, serial: int = 0
) -> tuple[int, int, Outcome]:
    """Run :func:`run_job` in a fork of this (warm) worker; kill the fork if the emulator
    sends this job's ``serial`` on the cancel pipe. Returns (worker pid, job process pid,
    outcome); a cancelled job's outcome is ``("cancelled", "", 0)``."""
    worker = os.getpid()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the job's process: simulate, send the outcome, never return
        code = 1
        try:
            os.close(read_fd)
            die_with_parent(worker)
            try:
                mine = run_job(program_id, name, fake_name, params, seed)
            except Exception as exc:  # noqa: BLE001 - becomes the job's failure, not a crash
                mine = ("failed", f"Internal error while running the job: {exc!r}", 1500)
            data = pickle.dumps(mine, protocol=pickle.HIGHEST_PROTOCOL)
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view) :]
            code = 0
        finally:
            os._exit(code)  # no atexit handlers or pool finalizers of the worker in a fork
    os.close(write_fd)
    cancelled, chunks = _collect(read_fd, pid, serial)
    _, status = os.waitpid(pid, 0)
    if cancelled:
        return worker, pid, ("cancelled", "", 0)
    try:
        if os.waitstatus_to_exitcode(status) != 0:
            raise ValueError
        outcome: Outcome = pickle.loads(b"".join(chunks))
    except (ValueError, EOFError, pickle.UnpicklingError):
        how = os.waitstatus_to_exitcode(status)
        what = f"signal {-how}" if how < 0 else f"exit status {how}"
        return worker, pid, ("failed", f"The job's simulation process died ({what}).", 1500)
    return worker, pid, outcome


def _collect(read_fd: int, pid: int, serial: int) -> tuple[bool, list[bytes]]:
    """Read the job process's outcome until EOF; on a cancel of ``serial``, kill it."""
    chunks: list[bytes] = []
    cancelled = False
    watch: list[Any] = [read_fd] + ([_CANCEL] if _CANCEL is not None else [])
    try:
        while True:
            ready, _, _ = select.select(watch, [], [])
            if _CANCEL is not None and _CANCEL in ready:
                try:
                    wanted = _CANCEL.recv()
                except EOFError:  # the emulator is gone; the death signal follows
                    wanted = serial
                    watch.remove(_CANCEL)
                if wanted == serial and not cancelled:  # stale serials (finished jobs): ignore
                    os.kill(pid, signal.SIGKILL)
                    cancelled = True
            if read_fd in ready:
                chunk = os.read(read_fd, 1 << 20)
                if not chunk:
                    return cancelled, chunks
                chunks.append(chunk)
    finally:
        os.close(read_fd)
