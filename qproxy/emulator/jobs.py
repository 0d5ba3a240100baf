"""Jobs, sessions and the per-backend execution lanes.

A job moves Queued -> Running -> Completed | Failed, or to Cancelled from either non-final
state; the state strings are the API's, which the client maps to QUEUED/RUNNING/DONE/ERROR/
CANCELLED. Each backend has a FIFO queue drained by ``lanes`` asyncio workers: a lane is one
parallel execution on the device, so with one lane jobs run strictly one after the other.

Each lane is pinned to its own worker process (a single-worker process pool, see worker.py
for why processes and not threads): at start the lane's worker builds its device's noise
model (``worker.warm_up``), and the lane takes its first job only once that is done, so no
job pays for the build and every job of a lane runs on a warm worker. A shared pool would
hand a job to whichever worker is idle, so the first jobs of a backend landed on workers
warmed for another backend and each rebuilt the models (several seconds at 133-156 qubits).
Memory: each worker holds only its own backend's models (one noise model per lane, where a
shared pool's workers would each end up holding every backend's). The number of lanes whose
warm-up has finished is ``Scheduler.lanes_warm`` (``GET /health`` reports it). A worker that
dies (its pool is then broken) is replaced, and the fresh one warmed up again.

Cancel means stop: the worker runs each job in a fork of itself, and cancelling a running
job sends the job's serial down the lane's cancel pipe, on which the worker kills the fork
(see worker.py); the lane takes its next job at once, on the same warm worker. Workers are
started with the ``spawn`` method, so they are children of this process and the kernel kills
them when it dies (``worker.die_with_parent``); ``stop`` kills them outright, so a SIGTERM
does not wait for a warm-up or a simulation to finish.

The event loop never blocks on a simulation, and this process never builds a noise model:
submit-time checks only decode and validate (it used to build each device's model here too,
unused: ~7 s of CPU per 156-qubit device at start).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import time
import traceback
import uuid
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

from ..runtime_api import ACTIVE_STATES, CANCELLED, COMPLETED, FAILED, QUEUED, RUNNING
from . import worker
from .backends import Device
from .errors import ApiError
from .programs import Prepared
from .simulate import JobFailure

log = logging.getLogger("qproxy.emulator")

FINAL_STATES = frozenset({COMPLETED, FAILED, CANCELLED})  # the emulator never times out a job
PENDING_STATES = ACTIVE_STATES
# Real jobs never finish instantly and the client polls; keep every job running this long.
MIN_RUN_SECONDS = 0.3


def now_iso(ts: float | None = None) -> str:
    """API timestamps: ISO 8601 UTC with milliseconds and a ``Z``."""
    dt = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


@dataclass
class Job:
    """One job and everything the API reports about it."""

    id: str
    program_id: str
    backend: str
    params: Any
    prepared: Prepared
    session_id: str | None = None
    tags: list[str] = field(default_factory=list)
    cost: int | None = None
    private: bool = False
    runtime: str = ""
    state: str = QUEUED
    reason: str | None = None
    reason_code: int | None = None
    created: float = field(default_factory=time.time)
    running: float | None = None
    finished: float | None = None
    result: str | None = None
    seed: int = 0
    serial: int = 0  # submission number: names the job on its lane's cancel pipe
    qpu_seconds: float = 0.0  # what the device would take for the shots (held Running)
    log_lines: list[str] = field(default_factory=list)
    # set on reaching a final state, for whoever waits on it (the Quantum System API's
    # uploads, qsa.py); the event loop is the only writer
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def set_final(self, state: str, reason: str | None = None, code: int | None = None) -> None:
        self.state = state
        self.reason = reason
        self.reason_code = code
        self.finished = time.time()
        self.log(f"job {state.lower()}" + (f": {reason}" if reason else ""))
        self.ended.set()

    def log(self, line: str) -> None:
        self.log_lines.append(f"{now_iso()} {line}")

    def quantum_seconds(self) -> float:
        if self.running is None:
            return 0.0
        end = self.finished if self.finished is not None else time.time()
        return round(max(0.0, end - self.running), 3)

    def state_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"status": self.state}
        if self.reason:
            doc["reason"] = self.reason
        if self.reason_code is not None:
            doc["reason_code"] = self.reason_code
        return doc

    def to_api(self, exclude_params: bool = False) -> dict[str, Any]:
        qs = self.quantum_seconds()
        doc: dict[str, Any] = {
            "id": self.id,
            "backend": self.backend,
            "state": self.state_doc(),
            "status": self.state,
            "program": {"id": self.program_id},
            "created": now_iso(self.created),
            "runtime": self.runtime,
            "cost": self.cost,
            "tags": list(self.tags),
            "session_id": self.session_id,
            "private": self.private,
            "user_id": "emulator-user",
            "usage": {"quantum_seconds": qs, "seconds": qs},
            "bss": {"seconds": qs},
        }
        if self.finished is not None:
            doc["ended"] = now_iso(self.finished)
        if not exclude_params and not self.private:
            # a private job's inputs are not stored by the service
            doc["params"] = self.params
        return doc

    def take_result(self) -> str | None:
        """The result body; a private job's result can be read once, then it is gone."""
        result = self.result
        if self.private and result is not None:
            self.result = ""
        return result

    def metrics(self) -> dict[str, Any]:
        qs = self.quantum_seconds()
        timestamps: dict[str, Any] = {
            "created": now_iso(self.created),
            "running": now_iso(self.running) if self.running else None,
            "finished": now_iso(self.finished) if self.finished else None,
        }
        return {
            "timestamps": timestamps,
            "bss": {"seconds": qs},
            "usage": {
                "quantum_seconds": qs,
                "seconds": qs,
                "qpu_charge_time_seconds": qs,
                "status": "final" if self.final else "pending",
            },
            "executions": self.prepared.shots if self.state == COMPLETED else 0,
            "num_circuits": self.prepared.circuits,
            "num_qubits": [],
            "circuit_depths": [],
            "qiskit_version": "",
            "estimated_start_time": None,
            "estimated_completion_time": None,
            "caller": "qproxy-emulator",
        }


@dataclass
class Lane:
    """One lane's worker: its single-process pool, the pipe that cancels its running job,
    the worker's pid once warm, and the job it is running."""

    pool: ProcessPoolExecutor
    cancel: Connection
    pid: int | None = None
    job: Job | None = None


@dataclass
class Session:
    """A dedicated session or a batch (``mode``)."""

    id: str
    backend: str
    mode: str
    max_ttl: int
    created: float = field(default_factory=time.time)
    accepting_jobs: bool = True
    state: str = "open"
    closed: float | None = None
    activated: float | None = None

    def to_api(self, jobs: Iterable[Job]) -> dict[str, Any]:
        mine = [j for j in jobs if j.session_id == self.id]
        elapsed = sum(j.quantum_seconds() for j in mine)
        return {
            "id": self.id,
            "backend_name": self.backend,
            "mode": self.mode,
            "state": self.state,
            "accepting_jobs": self.accepting_jobs,
            "max_ttl": self.max_ttl,
            "interactive_ttl": 60 if self.mode == "dedicated" else None,
            "active_ttl": self.max_ttl,
            "started_at": now_iso(self.activated) if self.activated else None,
            "activated_at": now_iso(self.activated) if self.activated else None,
            "closed_at": now_iso(self.closed) if self.closed else None,
            "created_at": now_iso(self.created),
            "last_job_started": None,
            "last_job_completed": None,
            "elapsed_time": round(elapsed, 3),
            "usage_time": round(elapsed, 3),
            "started_by": "emulator-user",
        }


class Scheduler:
    """Holds all jobs and sessions and runs jobs on the backends' lanes."""

    def __init__(
        self,
        devices: dict[str, Device],
        seed: int | None = None,
        min_job_seconds: float = MIN_RUN_SECONDS,
        qpu_time: bool = False,
    ) -> None:
        self.devices = devices
        self.min_job_seconds = min_job_seconds
        self.qpu_time = qpu_time
        self.seed = seed
        self.jobs: dict[str, Job] = {}
        self.sessions: dict[str, Session] = {}
        self._counter = 0
        self._queues: dict[str, asyncio.Queue[Job]] = {}
        self._workers: list[asyncio.Task[None]] = []
        # simulations run in worker processes, one pinned to each lane (see worker.py and
        # the module docstring); spawn: workers start from a clean process, not a fork of
        # this threaded one, and (unlike forkserver's) are our children, so they can be
        # told to die with us
        self._mp = multiprocessing.get_context("spawn")
        self._procs: dict[tuple[str, int], Lane] = {
            (name, lane): self._new_lane()
            for name, device in devices.items()
            for lane in range(device.lanes)
        }
        self._warming: dict[tuple[str, int], asyncio.Future[int]] = {}
        self._warm: set[tuple[str, int]] = set()

    @property
    def lanes_total(self) -> int:
        return len(self._procs)

    @property
    def lanes_warm(self) -> int:
        """Lanes whose worker has built its device's noise model (a failed warm-up counts
        as not warm)."""
        return len(self._warm)

    def _new_lane(self) -> Lane:
        reader, writer = self._mp.Pipe(duplex=False)
        pool = ProcessPoolExecutor(
            max_workers=1, mp_context=self._mp, initializer=worker.init_worker,
            initargs=(os.getpid(), reader),
        )
        return Lane(pool, writer)

    def _replace_worker(self, device: Device, lane: int) -> None:
        old = self._procs[(device.name, lane)]
        _kill_pool(old)
        old.cancel.close()
        self._procs[(device.name, lane)] = self._new_lane()
        self._warm_up(device, lane)

    def _warm_up(self, device: Device, lane: int) -> None:
        """Have the lane's own worker build its device's models; record when it is done."""
        key = (device.name, lane)
        self._warm.discard(key)
        lane_state = self._procs[key]
        fut = asyncio.get_running_loop().run_in_executor(
            lane_state.pool, worker.warm_up, device.name, device.fake_name
        )
        self._warming[key] = fut

        def done(f: asyncio.Future[int]) -> None:
            exc = None if f.cancelled() else f.exception()
            if f.cancelled() or self._warming.get(key) is not f:
                return  # stopped, or a replaced worker's
            if exc is not None:
                log.warning("warm-up of %s lane %d failed: %r", device.name, lane, exc)
            else:
                lane_state.pid = f.result()
                self._warm.add(key)

        fut.add_done_callback(done)

    async def start(self) -> None:
        """Start the lane workers and build the noise models in the background."""
        for name, device in self.devices.items():
            queue: asyncio.Queue[Job] = asyncio.Queue()
            self._queues[name] = queue
            for lane in range(device.lanes):
                self._warm_up(device, lane)
                self._workers.append(asyncio.create_task(self._lane(device, lane, queue)))

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for lane in self._procs.values():
            _kill_pool(lane)

    def queue_length(self, backend: str) -> int:
        return sum(1 for j in self.jobs.values() if j.backend == backend and j.state == QUEUED)

    def queue_position(self, job: Job) -> int | None:
        """1 for the next job the device takes (FIFO), None once it is not Queued."""
        if job.state != QUEUED:
            return None
        return 1 + sum(1 for j in self.jobs.values() if j.backend == job.backend
                       and j.state == QUEUED and j.created < job.created)

    def device(self, name: str | None) -> Device:
        if not name:
            raise ApiError(400, "'backend' is required.", 1400)
        try:
            return self.devices[name]
        except KeyError:
            raise ApiError(404, f"Backend {name!r} not found.", 1216) from None

    def submit(
        self,
        program_id: str,
        device: Device,
        params: Any,
        prepared: Prepared,
        *,
        session_id: str | None,
        tags: list[str],
        cost: int | None,
        private: bool,
        runtime: str,
        job_id: str | None = None,
        listed: bool = True,
    ) -> Job:
        """Queue a job on its device. ``job_id``: the client's own id (the Quantum System
        API's), else a new one; ``listed=False`` keeps the job out of :attr:`jobs` (the
        Runtime API's records), for an API that keeps its own (qsa.py)."""
        self._counter += 1
        seed = (
            (self.seed + self._counter) % (2**31)
            if self.seed is not None
            else uuid.uuid4().int % (2**31)
        )
        job = Job(
            id=job_id or _new_id(),
            program_id=program_id,
            backend=device.name,
            params=params,
            prepared=prepared,
            session_id=session_id,
            tags=tags,
            cost=cost,
            private=private,
            runtime=runtime,
            seed=seed,
            serial=self._counter,
            qpu_seconds=qpu_seconds(device, params, prepared.shots) if self.qpu_time else 0.0,
        )
        job.log(f"job queued on {device.name} (program {program_id}, seed {seed})")
        if listed:
            self.jobs[job.id] = job
        if session_id and session_id in self.sessions:
            sess = self.sessions[session_id]
            if sess.activated is None:
                sess.activated = time.time()
                sess.state = "active"
        self._queues[device.name].put_nowait(job)
        return job

    def get(self, job_id: str) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise ApiError(404, f"Job not found: {job_id}", 1291) from None

    def cancel(self, job: Job, reason: str = "Cancelled by user.") -> None:
        if job.final:
            raise ApiError(409, f"Job {job.id} is already in a final state ({job.state}).", 1307)
        job.set_final(CANCELLED, reason)
        self._stop_execution(job)

    def _stop_execution(self, job: Job) -> None:
        """Kill a cancelled job's simulation if a lane is running it (see worker.py): its
        worker kills the job's process and the lane is free for the next job at once."""
        for lane in self._procs.values():
            if lane.job is job:
                try:
                    lane.cancel.send(job.serial)
                except OSError:  # the worker is gone; the lane replaces it
                    pass

    def delete(self, job: Job) -> None:
        if not job.final:
            self.cancel(job, "Deleted by user.")
        self.jobs.pop(job.id, None)

    async def _lane(self, device: Device, lane: int, queue: asyncio.Queue[Job]) -> None:
        loop = asyncio.get_running_loop()
        key = (device.name, lane)
        while True:
            # the first job (and the first after a worker was replaced) waits, Queued, for
            # the warm-up; a failed warm-up does not stop the lane (the job builds the model)
            warming = self._warming.get(key)
            if warming is not None and not warming.done():
                await asyncio.wait([warming])
            job = await queue.get()
            # a paused or offline device (admin.py) keeps its jobs Queued, as IBM's paused
            # devices do, until it is back; a cancel still ends them meanwhile
            while device.availability != "online" and not job.final:
                await asyncio.sleep(0.2)
            if job.final:
                continue
            job.state = RUNNING
            job.running = time.time()
            job.log(f"job running on {device.name} lane {lane}")
            lane_state = self._procs[key]
            lane_state.job = job
            try:
                (pid, job_pid, (outcome, result, code)), _ = await asyncio.gather(
                    loop.run_in_executor(
                        lane_state.pool, worker.run_job_in_worker, job.program_id,
                        device.name, device.fake_name, job.params, job.seed, job.serial,
                    ),
                    self._hold(job),
                )
            except JobFailure as exc:
                if not job.final:
                    job.set_final(FAILED, exc.message, exc.code)
                continue
            except BrokenProcessPool as exc:
                log.error("worker of %s lane %d died (job %s); starting a new one",
                          device.name, lane, job.id)
                self._replace_worker(device, lane)
                if not job.final:
                    job.set_final(FAILED, f"Internal error while running the job: {exc}", 1500)
                continue
            except Exception as exc:  # noqa: BLE001 - a job failure must not kill the lane
                log.error("job %s crashed:\n%s", job.id, traceback.format_exc())
                if not job.final:
                    job.set_final(FAILED, f"Internal error while running the job: {exc}", 1500)
                continue
            finally:
                lane_state.job = None
            job.log(f"executed by worker process {pid} (job process {job_pid})")
            if job.final:
                if outcome == "cancelled":
                    job.log(f"simulation stopped {time.time() - (job.finished or 0):.3f} s "
                            "after the cancel")
                continue
            if outcome == "failed":
                job.set_final(FAILED, result, code)
            else:
                job.result = result
                job.set_final(COMPLETED)

    async def _hold(self, job: Job) -> None:
        """Keep a job Running at least ``min_job_seconds``, unless it is cancelled."""
        deadline = time.monotonic() + max(self.min_job_seconds, job.qpu_seconds)
        while not job.final and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.05))


def qpu_seconds(device: Device, params: Any, shots: int) -> float:
    """How long the device would take for ``shots``: one repetition delay per shot (the
    job's ``execution.rep_delay`` option, else the device's ``default_rep_delay``, in µs in
    the configuration), a lower bound of a real device's time (circuits take microseconds
    next to the 250 µs delay of the fake Eagles and Heron). 4096 shots: ~1 s."""
    rep_delay = None
    options = params.get("options") if isinstance(params, dict) else None
    execution = options.get("execution") if isinstance(options, dict) else None
    if isinstance(execution, dict) and isinstance(execution.get("rep_delay"), int | float):
        rep_delay = float(execution["rep_delay"])
    if rep_delay is None:
        rep_delay = float(device.configuration.get("default_rep_delay") or 0.0) * 1e-6
    return max(0.0, shots * rep_delay)


def _kill_pool(lane: Lane) -> None:
    """Stop a lane's pool and kill its worker now (with it, the job process it runs): a
    shutdown would wait for the warm-up or simulation in progress (a SIGTERM during a 156-
    qubit warm-up took over 20 s to exit). The pool's process table is private API."""
    procs = getattr(lane.pool, "_processes", None) or {}  # shutdown() drops it: read first
    pids = set(procs) | ({lane.pid} if lane.pid else set())
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    lane.pool.shutdown(wait=False, cancel_futures=True)


def _new_id() -> str:
    """Job/session ids look like IBM's (20 lowercase alphanumerics)."""
    return uuid.uuid4().hex[:20]
