"""IBM's Quantum System API (on-prem, formerly "Direct Access") on the emulator's engine.

Mounted as an aiohttp sub-application at ``/v1`` next to the Runtime API (``/api/v1``,
``/experimental/api/v1``): the paths do not overlap, and one sub-application carries its own
middlewares, so its errors have this API's shape and the Runtime API's are untouched. Jobs
run on the same :class:`~.jobs.Scheduler` (lanes, warm workers, cancel = stop) with the same
program preparation (:func:`.programs.prepare`); the Runtime API's records never see them.

What differs from the Runtime API, as IBM's published API, its QRMI client and its
simulator show it (docs/emulator.md, "Quantum System API"):

- ``POST /v1/jobs`` carries a **client-chosen id**, ``timeout_secs`` (required) and three
  presigned S3 URLs (``storage.input/results/logs``); it answers **204 with no body**. The
  emulator GETs the params from the input URL and PUTs the result (the Runtime-encoded
  ``PrimitiveResult``, the same text the Runtime API serves) and the log through the others.
  A bad signature or an expired URL is the S3 server's 403: the job is Failed, naming which
  URL, never the URL itself (it carries the S3 access key id).
- Status is ``Running`` from submission (**no Queued**) to ``Completed``/``Failed``/
  ``Cancelled``; it turns final once the result and log are stored, so a client that sees
  ``Completed`` can read them.
- **A job holds its lane until it is DELETEd**, final or not: past the device's lanes a POST
  gets 429 (code 1232), checked before the duplicate id (409, 1231); a reserved device
  (``locked``, set through the admin endpoint) gets 423 (1233). Cancel: 204, 409 (1306) once
  final. DELETE: 204 for a final job, 409 (1337) otherwise.
- Errors: ``{status_code, title, trace, errors: [{code, message, more_info, solution}]}``,
  codes as strings (QRMI's client parses them so).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from ..runtime_api import CANCELLED, COMPLETED, FAILED, RUNNING
from .auth import Authenticator
from .backends import Device
from .errors import ApiError
from .jobs import Job, Scheduler, now_iso
from .programs import PREPARERS, prepare

log = logging.getLogger("qproxy.emulator.qsa")

PREFIX = "/v1"
MORE_INFO = "https://quantum.cloud.ibm.com/docs/api/quantum-system"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
MAX_ID = 256
STORAGE_KINDS = ("input", "results", "logs")
S3_TIMEOUT = aiohttp.ClientTimeout(total=300, sock_connect=10)
# The service's codes (strings on the wire)
CODE_BAD_REQUEST = "1400"
CODE_UNAUTHORIZED = "1401"
CODE_BACKEND_NOT_FOUND = "1216"
CODE_DUPLICATE_ID = "1231"
CODE_LANES_BUSY = "1232"
CODE_RESERVED = "1233"
CODE_JOB_NOT_FOUND = "1291"
CODE_CANCEL_FINAL = "1306"
CODE_DELETE_NOT_FINAL = "1337"
# a job's failure reasons
REASON_STORAGE = 1520  # the job's input could not be read, or its result/log not stored
REASON_INVALID_INPUT = 1400

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class QsaError(Exception):
    """An error answered in this API's shape."""

    def __init__(self, status: int, code: str, message: str, solution: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.solution = solution


def error_body(status: int, code: str, message: str, solution: str = "") -> dict[str, Any]:
    return {
        "status_code": status,
        "title": message,
        "trace": uuid.uuid4().hex,
        "errors": [{"code": code, "message": message, "more_info": MORE_INFO,
                    "solution": solution}],
    }


def error_response(status: int, code: str, message: str, solution: str = "") -> web.Response:
    return web.json_response(error_body(status, code, message, solution), status=status)


@dataclass
class QsaJob:
    """One job as this API reports it; ``engine`` is the scheduler's job once the input is
    read and accepted (None before, or when reading it failed)."""

    id: str
    backend: str
    program_id: str
    log_level: str
    timeout_secs: int
    storage: dict[str, dict[str, str]]
    created: float = field(default_factory=time.time)
    status: str = RUNNING
    ended: float | None = None
    reason_code: int | None = None
    reason_message: str | None = None
    reason_solution: str | None = None
    engine: Job | None = None
    # how the run ended (state, reason code, message, solution), shown once the log is stored
    outcome: tuple[str, int | None, str | None, str | None] | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    log_lines: list[str] = field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.status != RUNNING

    def quantum_nanoseconds(self) -> int:
        eng = self.engine
        if eng is None or eng.running is None:
            return 0
        end = eng.finished if eng.finished is not None else time.time()
        return max(0, int((end - eng.running) * 1e9))

    def to_api(self) -> dict[str, Any]:
        eng = self.engine
        doc: dict[str, Any] = {
            "id": self.id,
            "backend": self.backend,
            "program_id": self.program_id,
            "log_level": self.log_level,
            "timeout_secs": self.timeout_secs,
            "storage": self.storage,  # echoed as given, presigned URLs included (as IBM does)
            "status": self.status,
            "created_time": now_iso(self.created),
            "usage": {"quantum_nanoseconds": self.quantum_nanoseconds()},
            "metrics": {"timestamps": {
                "created": now_iso(self.created),
                "running": now_iso(eng.running) if eng and eng.running else None,
                "finished": now_iso(self.ended) if self.ended else None,
            }},
        }
        if self.ended is not None:
            doc["end_time"] = now_iso(self.ended)
        if self.reason_code is not None:
            doc["reason_code"] = self.reason_code
        if self.reason_message:
            doc["reason_message"] = self.reason_message
        if self.reason_solution:
            doc["reason_solution"] = self.reason_solution
        return doc

    def log(self, line: str) -> None:
        self.log_lines.append(f"{now_iso()} {line}")


class QuantumSystemService:
    """The API's job records, on the shared scheduler. ``runtime_lanes``: whether the
    Runtime API is served too (reported as the device's ``ibm_quantum_compute`` lanes)."""

    def __init__(self, scheduler: Scheduler, runtime_lanes: bool) -> None:
        self.scheduler = scheduler
        self.runtime_lanes = runtime_lanes
        self.jobs: dict[str, QsaJob] = {}
        self._detached: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            # no cookies, no proxies from the environment: the presigned URL is the credential
            self._http = aiohttp.ClientSession(timeout=S3_TIMEOUT, trust_env=False,
                                               cookie_jar=aiohttp.DummyCookieJar())
        return self._http

    async def close(self) -> None:
        tasks = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        tasks += list(self._detached)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    def device(self, name: str) -> Device:
        device = self.scheduler.devices.get(name)
        if device is None:
            raise QsaError(404, CODE_BACKEND_NOT_FOUND, f"Backend {name} not found.")
        return device

    def held(self, backend: str) -> int:
        """Lanes held on a device: every job not yet deleted, final or not."""
        return sum(1 for j in self.jobs.values() if j.backend == backend)

    def get(self, job_id: str) -> QsaJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise QsaError(404, CODE_JOB_NOT_FOUND, f"Job not found. Job ID: {job_id}")
        return job

    def backend_doc(self, device: Device) -> dict[str, Any]:
        return {
            "name": device.name,
            "status": device.availability,
            "message": device.availability_message,
            "version": device.backend_version,
            "locked": device.locked,
        }

    def lanes_doc(self, device: Device) -> dict[str, Any]:
        return {
            "hpc_workload_manager": {"lanes": device.lanes},
            "ibm_quantum_compute": {"lanes": device.lanes if self.runtime_lanes else 0},
        }

    # --- a job's life -------------------------------------------------------------------

    def submit(self, body: dict[str, Any]) -> QsaJob:
        job_id = body.get("id")
        if not isinstance(job_id, str) or not 1 <= len(job_id) <= MAX_ID:
            raise QsaError(400, CODE_BAD_REQUEST, f"'id' must be a string of 1-{MAX_ID} "
                           "characters.", "Send a new UUID as the job id.")
        backend = body.get("backend")
        if not isinstance(backend, str) or not backend:
            raise QsaError(400, CODE_BAD_REQUEST, "'backend' is required.")
        program_id = body.get("program_id")
        if program_id not in PREPARERS:
            raise QsaError(400, CODE_BAD_REQUEST, f"'program_id' must be one of "
                           f"{', '.join(PREPARERS)}.")
        log_level = body.get("log_level", "warning")
        if log_level not in LOG_LEVELS:
            raise QsaError(400, CODE_BAD_REQUEST, f"'log_level' must be one of "
                           f"{', '.join(LOG_LEVELS)}.")
        timeout = body.get("timeout_secs")
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
            raise QsaError(400, CODE_BAD_REQUEST, "'timeout_secs' is required: a positive "
                           "integer (the job's system execution time limit).")
        storage = body.get("storage")
        if not isinstance(storage, dict):
            raise QsaError(400, CODE_BAD_REQUEST, "'storage' is required: {input, results, "
                           "logs}.")
        clean: dict[str, dict[str, str]] = {}
        for kind in STORAGE_KINDS:
            item = storage.get(kind)
            url = item.get("presigned_url") if isinstance(item, dict) else None
            if (not isinstance(item, dict) or item.get("type") != "s3_compatible"
                    or not isinstance(url, str) or not url.startswith(("http://", "https://"))):
                raise QsaError(400, CODE_BAD_REQUEST, f"'storage.{kind}' must be "
                               "{\"type\": \"s3_compatible\", \"presigned_url\": URL}.")
            clean[kind] = {"type": "s3_compatible", "presigned_url": url}
        device = self.device(backend)
        # the order IBM's service checks in: reservation, lanes, then the duplicate id
        if device.locked:
            raise QsaError(423, CODE_RESERVED, f"Backend {device.name} is reserved; jobs "
                           "outside the reservation cannot run.",
                           "Wait for the reservation to end.")
        if self.held(device.name) >= device.lanes:
            raise QsaError(429, CODE_LANES_BUSY, f"Every execution lane of {device.name} is "
                           f"busy ({device.lanes}).", "Delete finished jobs, or wait for "
                           "running ones to finish and delete them.")
        if job_id in self.jobs:
            raise QsaError(409, CODE_DUPLICATE_ID, f"A job with ID {job_id} already exists.",
                           "Use a new job id.")
        job = QsaJob(job_id, device.name, str(program_id), str(log_level), timeout, clean)
        job.log(f"job accepted for {device.name} (program {program_id})")
        self.jobs[job_id] = job
        job.task = asyncio.create_task(self._run(job, device))
        return job

    async def _run(self, job: QsaJob, device: Device) -> None:
        """Read the input, run it on the scheduler, store the result and log, then show the
        job final (a cancel shows at once)."""
        try:
            params = await self._read_input(job)
            if params is not None and not job.final:
                await self._execute(job, device, params)
        except Exception as exc:  # noqa: BLE001 - the job fails, the service goes on
            # the type only: an exception's text may quote a presigned URL
            log.error("job %s: internal error (%s)", job.id, type(exc).__name__)
            log.debug("job %s", job.id, exc_info=True)
            self._fail(job, 1500, f"Internal error while running the job "
                       f"({type(exc).__name__}).")
        await self._store_logs(job)
        if not job.final:
            state, code, message, solution = job.outcome or (COMPLETED, None, None, None)
            job.reason_code, job.reason_message, job.reason_solution = code, message, solution
            job.ended = time.time()
            job.status = state

    def cancel(self, job: QsaJob) -> None:
        if job.final:
            raise QsaError(409, CODE_CANCEL_FINAL, f"Job {job.id} is already in a final "
                           f"state ({job.status}) and cannot be cancelled.")
        job.status = CANCELLED
        job.ended = time.time()
        job.log("job cancelled by user")
        if job.engine is not None and not job.engine.final:
            self.scheduler.cancel(job.engine, "Cancelled by user.")

    def delete(self, job: QsaJob) -> None:
        if not job.final:
            raise QsaError(409, CODE_DELETE_NOT_FINAL, f"Job {job.id} is not in a final state "
                           f"({job.status}); only final jobs can be deleted.",
                           "Cancel the job first, or wait for it to finish.")
        # the lane is free now; a log upload still under way finishes in the background
        del self.jobs[job.id]
        if job.task is not None and not job.task.done():
            self._detached.add(job.task)
            job.task.add_done_callback(self._detached.discard)

    def _fail(self, job: QsaJob, code: int, message: str, solution: str = "") -> None:
        job.log(f"job failed: {message}")
        job.outcome = (FAILED, code, message, solution or None)

    async def _read_input(self, job: QsaJob) -> Any:
        url = job.storage["input"]["presigned_url"]
        try:
            async with self.http().get(URL(url, encoded=True)) as resp:
                if resp.status != 200:
                    self._storage_failed(job, "input", "read", resp.status)
                    return None
                raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._storage_failed(job, "input", "read", None, type(exc).__name__)
            return None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._fail(job, REASON_INVALID_INPUT, "The job's input is not valid JSON.")
            return None

    def _storage_failed(self, job: QsaJob, kind: str, verb: str, status: int | None,
                        what: str = "") -> None:
        # never the URL: it carries the S3 access key id
        detail = f"HTTP {status}" if status is not None else what
        self._fail(job, REASON_STORAGE, f"The job's {kind} could not be {verb} through its "
                   f"presigned URL ({detail}).", "Check that the presigned URL is correctly "
                   "signed, has not expired and names an existing bucket.")

    async def _execute(self, job: QsaJob, device: Device, params: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            prepared = await loop.run_in_executor(None, prepare, job.program_id, device, params)
        except ApiError as exc:
            self._fail(job, REASON_INVALID_INPUT, exc.message)
            return
        if job.final:  # cancelled while the input was prepared
            return
        engine = self.scheduler.submit(
            job.program_id, device, params, prepared, session_id=None, tags=[], cost=None,
            private=False, runtime="", job_id=job.id, listed=False)
        job.engine = engine
        await engine.ended.wait()
        if engine.state == COMPLETED and engine.result is not None:
            status = await self._put(job, "results", engine.result.encode())
            if status is not None:
                self._storage_failed(job, "results", "stored", status)
        elif engine.state == FAILED:
            self._fail(job, engine.reason_code or 1500, engine.reason or "The job failed.")

    async def _put(self, job: QsaJob, kind: str, body: bytes) -> int | None:
        """PUT ``body`` to the job's ``kind`` URL: None when stored, else the HTTP status
        (0: no answer)."""
        url = job.storage[kind]["presigned_url"]
        try:
            async with self.http().put(URL(url, encoded=True), data=body) as resp:
                await resp.read()
                return None if resp.status in (200, 201, 204) else resp.status
        except (aiohttp.ClientError, TimeoutError):
            return 0

    async def _store_logs(self, job: QsaJob) -> None:
        lines = list(job.log_lines)
        if job.engine is not None:
            lines += job.engine.log_lines
        status = await self._put(job, "logs", ("\n".join(sorted(lines)) + "\n").encode())
        if status is not None:
            log.warning("job %s: its log could not be stored (HTTP %s)", job.id, status)


SERVICE = web.AppKey("qsa_service", QuantumSystemService)


# --- handlers ---------------------------------------------------------------------------


def _service(request: web.Request) -> QuantumSystemService:
    return request.app[SERVICE]


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise QsaError(400, CODE_BAD_REQUEST, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise QsaError(400, CODE_BAD_REQUEST, "The request body must be a JSON object.")
    return body


async def list_backends(request: web.Request) -> web.Response:
    svc = _service(request)
    return web.json_response(
        {"backends": [svc.backend_doc(d) for d in svc.scheduler.devices.values()]})


async def get_backend(request: web.Request) -> web.Response:
    svc = _service(request)
    return web.json_response(svc.backend_doc(svc.device(request.match_info["name"])))


async def backend_configuration(request: web.Request) -> web.Response:
    return web.json_response(
        _service(request).device(request.match_info["name"]).configuration_doc())


async def backend_properties(request: web.Request) -> web.Response:
    return web.json_response(
        _service(request).device(request.match_info["name"]).properties_doc())


async def backend_lanes(request: web.Request) -> web.Response:
    svc = _service(request)
    return web.json_response(svc.lanes_doc(svc.device(request.match_info["name"])))


async def create_job(request: web.Request) -> web.Response:
    _service(request).submit(await _json_body(request))
    return web.Response(status=204)


async def list_jobs(request: web.Request) -> web.Response:
    jobs = sorted(_service(request).jobs.values(), key=lambda j: j.created, reverse=True)
    return web.json_response({"jobs": [j.to_api() for j in jobs]})


async def get_job(request: web.Request) -> web.Response:
    return web.json_response(_service(request).get(request.match_info["job_id"]).to_api())


async def cancel_job(request: web.Request) -> web.Response:
    svc = _service(request)
    svc.cancel(svc.get(request.match_info["job_id"]))
    return web.Response(status=204)


async def delete_job(request: web.Request) -> web.Response:
    svc = _service(request)
    svc.delete(svc.get(request.match_info["job_id"]))
    return web.Response(status=204)


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/backends", list_backends),
    ("GET", "/backends/{name}", get_backend),
    ("GET", "/backends/{name}/configuration", backend_configuration),
    ("GET", "/backends/{name}/properties", backend_properties),
    ("GET", "/backends/{name}/lanes", backend_lanes),
    ("POST", "/jobs", create_job),
    ("GET", "/jobs", list_jobs),
    ("GET", "/jobs/{job_id}", get_job),
    ("POST", "/jobs/{job_id}/cancel", cancel_job),
    ("DELETE", "/jobs/{job_id}", delete_job),
]


def _middleware(auth: Authenticator) -> Any:
    """Authentication (IAM bearer token, or ``apikey KEY``), then every failure in this
    API's error shape: never the Runtime API's, a traceback or an HTML page."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            try:
                auth.authenticate(request.headers.get("Authorization"))
            except ApiError as exc:
                raise QsaError(401, CODE_UNAUTHORIZED, exc.message) from None
            return await handler(request)
        except QsaError as exc:
            return error_response(exc.status, exc.code, exc.message, exc.solution)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = exc.reason if exc.status != 404 else f"Not found: {request.path}"
            return error_response(exc.status, str(exc.status), message)
        except Exception:  # noqa: BLE001 - last resort: log it, answer 500 in the API's shape
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(500, "1500", "Internal server error.")

    return middleware


def create_subapp(scheduler: Scheduler, auth: Authenticator, runtime_lanes: bool
                  ) -> web.Application:
    """The API as a sub-application, to mount at :data:`PREFIX` on the emulator's app."""
    sub = web.Application(middlewares=[_middleware(auth)], client_max_size=256 * 1024 * 1024)
    service = QuantumSystemService(scheduler, runtime_lanes)
    sub[SERVICE] = service
    for method, path, handler in ROUTES:
        sub.router.add_route(method, path, handler)

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        yield
        await service.close()

    sub.cleanup_ctx.append(lifecycle)
    return sub
