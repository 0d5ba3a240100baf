"""The ``ibm-quantum-system`` kind: an on-prem IBM system's Quantum System API (formerly
"Direct Access"), translated to and from the Runtime API the job speaks.

What differs, and what this module does about it (facts: docs/emulator.md, "Quantum System
API"; IBM's published API and its QRMI client):

- **Params travel through S3.** ``submit`` mints the job id (the API takes a client-chosen
  one), stores the params in the centre's bucket exactly as the job sent them
  (``input_{id}.json``), presigns a GET for the input and PUTs for the results and logs
  (``results_{id}.json``, ``logs_{id}.json``) valid until the Slurm job ends (at most SigV4's 7
  days), and POSTs the job (204, no body). Results and logs are streamed from the bucket as
  the Runtime API serves them.
- **No Queued.** A 429 (code 1232: every lane busy) or 423 (1233: reserved) means the job does
  not exist upstream yet: the job sees it ``Queued`` with the reason while a task here tries
  again with backoff, within the job's lanes (the proxy's lane gate counts it) and its time
  limit. A POST whose answer was lost is checked with a GET before it is sent again, and the
  id is the same on every try: one submission is never two upstream jobs.
- **Finished jobs hold a lane until DELETEd.** Once the proxy has booked a final job
  (``release``, called after the usage is in the ledger) its upstream record is deleted; the
  job's document lives on in this module's records, its results and logs in the bucket until
  ``purge`` (the epilog at the latest).
- **No sessions, tags, /results, /logs or /metrics upstream.** Sessions and batches are kept
  here (the job's jobs are submitted as plain jobs; closing a session cancels its unfinished
  ones, as the Runtime API does); tags are kept here; metrics come from
  ``usage.quantum_nanoseconds``.
- **Errors** come in ``{status_code, title, trace, errors: [{code (a string), message,
  more_info, solution}]}``: translated to the Runtime shape, with any URL in a message
  replaced (the API echoes presigned URLs in its job documents; none reaches the job).

Records live in this process: a proxy that restarts within its Slurm job still finds its
jobs upstream until they are released; a released one it no longer describes (its usage is
in the ledger, its objects are purged by the epilog).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qproxy.config import QuantumSystemSettings, UpstreamSettings
from qproxy.runtime_api import (
    CANCELLED,
    COMPLETED,
    FAILED,
    QUEUED,
    RUNNING,
    error_body,
    is_final,
    parse_time,
)
from qproxy.upstream import jsonx
from qproxy.upstream.base import (
    Capacity,
    Content,
    DeviceStatus,
    Observer,
    Reply,
    Submission,
    Upstream,
    UpstreamError,
)
from qproxy.upstream.s3 import MAX_EXPIRY, ObjectStore
from qproxy.upstream.transport import Transport

log = logging.getLogger("qproxy.upstream.quantum_system")

API = "/v1"
MORE_INFO = "https://quantum.cloud.ibm.com/docs/api/quantum-system"
STORAGE = ("input", "results", "logs")
# the system's codes (strings on the wire)
CODE_DUPLICATE = "1231"
CODE_LANES_BUSY = "1232"
CODE_RESERVED = "1233"
# a presigned URL outlives the Slurm job's end by this much (results land just before it)
EXPIRY_MARGIN = 600
# what a submission waits between tries: doubling from FIRST_RETRY up to retry_max_seconds
FIRST_RETRY = 0.25
# an input read back for a job document (``params``) is at most this large
PARAMS_LIMIT = 256 * 1024 * 1024
# a cancelled job turns final upstream shortly after the cancel; purge waits this long
PURGE_WAIT = 30.0
_URL = re.compile(r"https?://\S+")


def key(kind: str, job_id: str) -> str:
    """The object of one of a job's three storage slots."""
    return f"{kind}_{job_id}.json"


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def _scrub(text: str) -> str:
    return _URL.sub("<url>", text)[:500]


def runtime_error(status: int, message: str, code: int | str | None = None,
                  trace: str | None = None) -> Reply:
    body = error_body(status, _scrub(message), code, more_info=MORE_INFO, trace=trace)
    return Reply(status, body, jsonx.dumps(body))


def translate_error(status: int, doc: Any, what: str) -> Reply:
    """The system's error body in the Runtime API's shape (codes as integers where they
    are, messages with their solution, never a URL)."""
    doc = doc if isinstance(doc, dict) else {}
    errors = doc.get("errors")
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0],
                                                                             dict) else {}
    message = str(first.get("message") or doc.get("title") or f"{what}: HTTP {status}")
    if first.get("solution"):
        message += f" {first['solution']}"
    code = first.get("code")
    code = int(code) if isinstance(code, str) and code.isdigit() else code
    trace = doc.get("trace")
    return runtime_error(status, message, code if isinstance(code, int) else None,
                         trace if isinstance(trace, str) else None)


@dataclass
class JobRecord:
    """One of the job's upstream jobs as the proxy knows it (the Runtime API's fields)."""

    id: str
    backend: str
    program_id: str
    cost: int
    deadline: float
    session_id: str | None = None
    tags: list[str] = field(default_factory=list)
    private: bool = False
    created: float = field(default_factory=time.time)
    status: str = QUEUED
    reason: str | None = None
    reason_code: int | None = None
    running: float | None = None
    ended: float | None = None
    quantum_ns: int = 0
    submitted: bool = False  # the POST landed: the system holds it (and a lane)
    released: bool = False  # its upstream record is deleted (booked first)
    retry: asyncio.Task[None] | None = field(default=None, repr=False)

    def to_api(self) -> dict[str, Any]:
        state: dict[str, Any] = {"status": self.status}
        if self.reason:
            state["reason"] = self.reason
        if self.reason_code is not None:
            state["reason_code"] = self.reason_code
        seconds = round(self.quantum_ns / 1e9, 3)
        doc: dict[str, Any] = {
            "id": self.id, "backend": self.backend, "state": state, "status": self.status,
            "program": {"id": self.program_id}, "created": _iso(self.created),
            "runtime": "", "cost": self.cost, "tags": list(self.tags),
            "session_id": self.session_id, "private": self.private,
            "usage": {"quantum_seconds": seconds, "seconds": seconds},
            "bss": {"seconds": seconds},
        }
        if self.ended is not None:
            doc["ended"] = _iso(self.ended)
        return doc

    def metrics(self) -> dict[str, Any]:
        seconds = round(self.quantum_ns / 1e9, 3)
        return {
            "timestamps": {"created": _iso(self.created), "running": _iso(self.running),
                           "finished": _iso(self.ended)},
            "bss": {"seconds": seconds},
            "usage": {"quantum_seconds": seconds, "seconds": seconds,
                      "qpu_charge_time_seconds": seconds,
                      "status": "final" if is_final(self.status) else "pending"},
        }

    def absorb(self, doc: dict[str, Any]) -> None:
        """The system's view of the job (``GET /v1/jobs/{id}``)."""
        status = doc.get("status")
        if status in (RUNNING, COMPLETED, FAILED, CANCELLED):
            self.status = status
        if isinstance(doc.get("reason_message"), str):
            self.reason = _scrub(doc["reason_message"] + (
                f" {doc['reason_solution']}" if isinstance(doc.get("reason_solution"), str)
                else ""))
        if isinstance(doc.get("reason_code"), int):
            self.reason_code = doc["reason_code"]
        usage = doc.get("usage")
        ns = usage.get("quantum_nanoseconds") if isinstance(usage, dict) else None
        if isinstance(ns, int) and not isinstance(ns, bool) and ns >= 0:
            self.quantum_ns = ns
        stamps = (doc.get("metrics") or {}).get("timestamps") if isinstance(
            doc.get("metrics"), dict) else None
        if isinstance(stamps, dict) and isinstance(stamps.get("running"), str):
            self.running = parse_time(stamps["running"]) or self.running
        if is_final(self.status) and self.ended is None:
            ended = doc.get("end_time")
            self.ended = (parse_time(ended) if isinstance(ended, str) else None) or time.time()


@dataclass
class SessionRecord:
    id: str
    backend: str
    mode: str
    max_ttl: int
    created: float = field(default_factory=time.time)
    accepting_jobs: bool = True
    state: str = "open"
    closed: float | None = None

    def to_api(self, jobs: list[JobRecord]) -> dict[str, Any]:
        used = round(sum(j.quantum_ns for j in jobs) / 1e9, 3)
        return {
            "id": self.id, "backend_name": self.backend, "mode": self.mode,
            "state": self.state, "accepting_jobs": self.accepting_jobs,
            "max_ttl": self.max_ttl, "active_ttl": self.max_ttl,
            "interactive_ttl": 60 if self.mode == "dedicated" else None,
            "started_at": _iso(self.created), "activated_at": _iso(self.created),
            "created_at": _iso(self.created), "closed_at": _iso(self.closed),
            "elapsed_time": used, "usage_time": used,
        }


class QuantumSystemUpstream:
    """Runtime API operations on a Quantum System API and an S3 bucket."""

    kind = "ibm-quantum-system"

    def __init__(self, upstream: UpstreamSettings, credentials: Mapping[str, str],
                 timeout: float = 300.0) -> None:
        if not isinstance(upstream, QuantumSystemSettings):
            raise TypeError("an ibm-quantum-system upstream needs its settings table")
        self.settings = upstream
        self.http = Transport(upstream.url, upstream.iam_url,
                              credentials[upstream.api_key_secret], upstream.verify_tls,
                              {"Service-CRN": upstream.instance}, timeout)
        self.store = ObjectStore(upstream.s3_endpoint, upstream.s3_bucket, upstream.s3_region,
                                 credentials[upstream.s3_access_key_secret],
                                 credentials[upstream.s3_secret_key_secret],
                                 upstream.verify_tls)
        self.base = self.http.base
        self.jobs: dict[str, JobRecord] = {}
        self.sessions: dict[str, SessionRecord] = {}
        self._configs: dict[str, Any] = {}

    def __repr__(self) -> str:  # never the keys
        return f"QuantumSystemUpstream({self.base!r})"

    @property
    def observe(self) -> Observer | None:
        return self.http.observe

    @observe.setter
    def observe(self, value: Observer | None) -> None:
        self.http.observe = self.store.observe = value

    async def _call(self, op: str, method: str, path: str, body: Any = None,
                    ) -> tuple[int, Any]:
        status, doc, _ = await self.http.call(op, method, API + path, body=body)
        return status, doc

    # --- backends -------------------------------------------------------------------------

    async def _backend(self, name: str) -> tuple[int, Any]:
        return await self._call("backend", "GET", f"/backends/{name}")

    async def _configuration(self, name: str) -> Any:
        if name not in self._configs:
            status, doc = await self._call("backend_configuration", "GET",
                                           f"/backends/{name}/configuration")
            if status != 200:
                return None
            self._configs[name] = doc
        return self._configs[name]

    async def list_backends(self, query: Mapping[str, str]) -> Reply:
        status, doc = await self._call("backends", "GET", "/backends")
        if status != 200 or not isinstance(doc, dict):
            return translate_error(status, doc, "backends")
        devices = []
        for b in doc.get("backends") or []:
            if not isinstance(b, dict) or not isinstance(b.get("name"), str):
                continue
            conf = await self._configuration(b["name"])
            qubits = conf.get("n_qubits") if isinstance(conf, dict) else None
            devices.append({
                "name": b["name"],
                "status": {"name": b.get("status"), "reason": b.get("message") or ""},
                "is_simulator": False, "qubits": qubits, "physical_qubits": qubits,
                "queue_length": 0, "class": "device",
                "processor_type": (conf or {}).get("processor_type") or {}
                if isinstance(conf, dict) else {},
            })
        body = {"devices": devices}
        return Reply(200, body, jsonx.dumps(body))

    async def backend_doc(self, name: str, what: str, query: Mapping[str, str]) -> Reply:
        if what in ("configuration", "properties"):
            status, doc, raw = await self.http.call(f"backend_{what}", "GET",
                                                    f"{API}/backends/{name}/{what}")
            if status != 200:
                return translate_error(status, doc, what)
            return Reply(status, doc, raw)
        if what == "status":
            status, doc = await self._backend(name)
            if status != 200 or not isinstance(doc, dict):
                return translate_error(status, doc, "status")
            st = _device_status(doc)
            body = {"backend_name": name, "state": st.online and not st.locked,
                    "status": st.status, "message": st.message, "length_queue": 0,
                    "backend_version": doc.get("version") or ""}
            return Reply(200, body, jsonx.dumps(body))
        return runtime_error(404, f"{what} is not available for {name} on this system", 1404)

    async def device_status(self, backend: str) -> DeviceStatus:
        status, doc = await self._backend(backend)
        if status != 200 or not isinstance(doc, dict):
            raise UpstreamError(f"status of {backend}: HTTP {status}")
        return _device_status(doc)

    async def capacity(self, backend: str) -> Capacity:
        status, doc = await self._call("backend_lanes", "GET", f"/backends/{backend}/lanes")
        if status != 200 or not isinstance(doc, dict):
            raise UpstreamError(f"lanes of {backend}: HTTP {status}")

        def lanes(part: str) -> int | None:
            n = (doc.get(part) or {}).get("lanes") if isinstance(doc.get(part), dict) else None
            return n if isinstance(n, int) and not isinstance(n, bool) else None

        return Capacity(lanes("hpc_workload_manager"), lanes("ibm_quantum_compute"))

    # --- submission -----------------------------------------------------------------------

    async def submit(self, sub: Submission) -> Reply:
        f = sub.fields
        program = f.get("program_id")
        if not isinstance(program, str) or not program:
            return runtime_error(400, "'program_id' is required.", 1400)
        backend = f.get("backend")
        if not isinstance(backend, str) or not backend:
            return runtime_error(400, "'backend' is required.", 1400)
        sid = f.get("session_id")
        if sid is not None:
            sess = self.sessions.get(sid)
            if sess is None or sess.state == "closed" or not sess.accepting_jobs:
                return runtime_error(400, f"Session {str(sid)[:64]} is closed and accepts "
                                     "no new jobs.", 1217)
        if "params" not in f:
            return runtime_error(400, "'params' is required.", 1400)
        params = f["params"]
        data = params.data if isinstance(params, jsonx.Raw) else jsonx.dumps(
            params, sub.stdlib_json)
        cost = f.get("cost")
        deadline = sub.deadline if sub.deadline is not None else time.time() + 3600
        job = JobRecord(
            id=str(uuid.uuid4()), backend=backend, program_id=program,
            cost=int(cost) if isinstance(cost, int) and cost > 0 else max(
                1, math.floor(deadline - time.time())),
            deadline=deadline, session_id=sid if isinstance(sid, str) else None,
            tags=[t for t in f.get("tags") or [] if isinstance(t, str)],
            private=bool(f.get("private", False)))
        if f.get("start_session") and job.session_id is None:
            self.sessions[job.id] = SessionRecord(job.id, backend, "dedicated",
                                                  int(f.get("session_time") or job.cost))
            job.session_id = job.id
        await self.store.put(key("input", job.id), data)
        uncertain = False
        try:
            refused = await self._post(job)
        except UpstreamError as exc:  # the answer was lost: the retry looks first
            uncertain, refused = True, None
            job.reason = f"the system cannot be reached ({exc}); the QPU proxy retries"
        if refused is not None:  # refused for good: nothing of it is left
            await self._drop_objects(job.id)
            return refused
        self.jobs[job.id] = job
        if not job.submitted:
            job.retry = asyncio.ensure_future(self._retry(job, uncertain))
        body = {"id": job.id, "backend": backend, "session_id": job.session_id}
        return Reply(200, body, jsonx.dumps(body))

    def _request(self, job: JobRecord) -> dict[str, Any]:
        expires = max(60, min(MAX_EXPIRY, int(job.deadline - time.time()) + EXPIRY_MARGIN))
        storage = {
            kind: {"type": "s3_compatible",
                   "presigned_url": self.store.presign("GET" if kind == "input" else "PUT",
                                                       key(kind, job.id), expires)}
            for kind in STORAGE}
        return {"id": job.id, "backend": job.backend, "program_id": job.program_id,
                "log_level": "warning",
                "timeout_secs": max(1, min(job.cost, int(job.deadline - time.time()) or 1)),
                "storage": storage}

    async def _post(self, job: JobRecord) -> Reply | None:
        """One try: None when the job landed or must wait (429/423: Queued, with the
        reason); a Reply when the system refused it for good. Raises UpstreamError when the
        answer was lost (the job may or may not exist: look before trying again)."""
        status, doc = await self._call("submit", "POST", "/jobs", self._request(job))
        code = _code(doc)
        if status in (200, 201, 204) or (status == 409 and code == CODE_DUPLICATE):
            # a duplicate of our own id: an earlier try landed after all
            job.submitted = True
            job.status, job.reason, job.reason_code = RUNNING, None, None
            return None
        if status in (423, 429) and code in (CODE_RESERVED, CODE_LANES_BUSY):
            job.status = QUEUED
            job.reason = (f"{job.backend} is reserved; the QPU proxy submits the job when "
                          "the reservation ends" if status == 423 else
                          f"every execution lane of {job.backend} is busy; the QPU proxy "
                          "submits the job when one is free")
            job.reason_code = int(code) if code else None
            return None
        return translate_error(status, doc, "submit")

    async def _exists(self, job: JobRecord) -> bool:
        status, doc = await self._call("get_job", "GET", f"/jobs/{job.id}")
        if status == 200 and isinstance(doc, dict):
            job.submitted = True
            job.absorb(doc)
            return True
        if status == 404:
            return False
        raise UpstreamError(f"the system answered HTTP {status}")

    async def _retry(self, job: JobRecord, uncertain: bool) -> None:
        """Try again until the job lands, is cancelled or the Slurm job's time is up; after a
        lost answer, look first (the id is the same: never a second job)."""
        delay = FIRST_RETRY
        while not job.submitted and not is_final(job.status):
            if time.time() + delay >= job.deadline:
                self._end(job, CANCELLED, "the Slurm job's time limit passed before the "
                          "system took the job")
                await self._drop_objects(job.id)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.retry_max_seconds)
            if is_final(job.status):  # cancelled meanwhile
                return
            try:
                if uncertain and await self._exists(job):
                    return
                refused = await self._post(job)
                uncertain = False
            except UpstreamError as exc:
                uncertain = True
                job.reason = f"the system cannot be reached ({exc}); the QPU proxy retries"
                continue
            if refused is not None:
                doc = refused.doc
                message = doc["errors"][0]["message"] if isinstance(doc, dict) else ""
                self._end(job, FAILED, f"the system refused the job: {message}")
                await self._drop_objects(job.id)

    def _end(self, job: JobRecord, status: str, reason: str) -> None:
        job.status, job.reason, job.ended = status, reason, time.time()

    # --- a job's life ---------------------------------------------------------------------

    def _unknown(self, job_id: str) -> Reply:
        return runtime_error(404, f"Job not found. Job ID: {job_id[:64]}", 1291)

    async def _refresh(self, job_id: str) -> JobRecord | Reply:
        """The job's record, brought up to date from the system while it runs there."""
        job = self.jobs.get(job_id)
        if job is not None and (not job.submitted or job.released or is_final(job.status)):
            return job
        status, doc = await self._call("get_job", "GET", f"/jobs/{job_id}")
        if status == 404 and job is not None:  # deleted behind our back
            self._end(job, FAILED, "the job's record is gone from the system")
            return job
        if status != 200 or not isinstance(doc, dict):
            return translate_error(status, doc, "job")
        if job is None:  # another process's job (the epilog's cleanup)
            job = JobRecord(id=job_id, backend=str(doc.get("backend") or ""),
                            program_id=str(doc.get("program_id") or ""),
                            cost=int(doc.get("timeout_secs") or 0), deadline=time.time(),
                            submitted=True)
            created = doc.get("created_time")
            job.created = (parse_time(created) if isinstance(created, str) else None) or \
                job.created
            job.absorb(doc)
            return job  # not kept: nothing here owns it
        job.absorb(doc)
        return job

    async def get_job(self, job_id: str, query: Mapping[str, str]) -> Reply:
        job = await self._refresh(job_id)
        if isinstance(job, Reply):
            return job
        doc = job.to_api()
        if query.get("exclude_params") != "true" and not job.private:
            params = await self.store.read(key("input", job_id), PARAMS_LIMIT)
            if params is not None:
                doc["params"] = jsonx.Raw(params)
        return Reply(200, doc, jsonx.dumps(doc))

    async def cancel_job(self, job_id: str) -> Reply:
        job = await self._refresh(job_id)
        if isinstance(job, Reply):
            return job
        if is_final(job.status):
            return runtime_error(409, f"Job {job_id} is already in a final state "
                                 f"({job.status}).", 3207)
        if not job.submitted:
            self._end(job, CANCELLED, "cancelled before the system took it")
            if job.retry is not None:
                job.retry.cancel()
            return Reply(204)
        status, doc = await self._call("cancel_job", "POST", f"/jobs/{job_id}/cancel")
        if status in (200, 202, 204):
            job.status = CANCELLED
            job.ended = job.ended or time.time()
            return Reply(204)
        return translate_error(status, doc, "cancel")

    async def delete_job(self, job_id: str) -> Reply:
        job = self.jobs.get(job_id)
        if job is None:
            return self._unknown(job_id)
        await self.purge(job_id)
        return Reply(204)

    async def job_tags(self, job_id: str, tags: list[str]) -> Reply:
        job = self.jobs.get(job_id)
        if job is None:
            return self._unknown(job_id)
        job.tags = list(tags)
        return Reply(204)

    async def job_metrics(self, job_id: str) -> Reply:
        job = await self._refresh(job_id)
        if isinstance(job, Reply):
            return job
        doc = job.metrics()
        return Reply(200, doc, jsonx.dumps(doc))

    @asynccontextmanager
    async def job_content(self, job_id: str, what: str, query: Mapping[str, str],
                          ) -> AsyncIterator[Content]:
        job = await self._refresh(job_id)
        refusal: Reply | None = job if isinstance(job, Reply) else None
        if isinstance(job, JobRecord):
            if what not in ("results", "logs"):
                refusal = runtime_error(404, f"{what} are not available on this system", 1404)
            elif what == "results" and not is_final(job.status):
                refusal = runtime_error(400, f"Job {job_id} has not finished yet "
                                        f"({job.status}).", 1234)
            elif what == "results" and job.status != COMPLETED:
                # like the Runtime API: a failed job's "result" is its error text
                text = (job.reason or job.status).encode()
                yield Content(200, _once(text), "text/plain", len(text))
                return
        if refusal is not None:
            yield Content(refusal.status, _once(refusal.raw), "application/json",
                          len(refusal.raw))
            return
        async with self.store.get(key(what, job_id)) as (status, length, chunks):
            if status == 200:
                yield Content(200, chunks, "text/plain", length)
                return
        if what == "logs":  # not written yet (or never): no lines
            yield Content(200, _once(b""), "text/plain", 0)
            return
        missing = runtime_error(404, f"the results of job {job_id} are not available", 1404)
        yield Content(404, _once(missing.raw), "application/json", len(missing.raw))

    async def release(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.released or not job.submitted or not is_final(job.status):
            return
        status, _ = await self._call("delete_job", "DELETE", f"/jobs/{job_id}")
        if status in (200, 204, 404):
            job.released = True

    async def purge(self, job_id: str) -> None:
        """Cancel it if it still runs, delete its upstream record once final (a lane), then
        its three objects."""
        job = self.jobs.get(job_id)
        if job is not None and job.retry is not None and not job.retry.done():
            job.retry.cancel()
        if job is None or (job.submitted and not job.released):
            await self._delete_upstream(job_id)
        await self._drop_objects(job_id)
        self.jobs.pop(job_id, None)

    async def _delete_upstream(self, job_id: str) -> None:
        waited = 0.0
        while True:
            status, doc = await self._call("delete_job", "DELETE", f"/jobs/{job_id}")
            if status in (200, 204, 404):
                return
            if status != 409 or waited >= PURGE_WAIT:
                log.warning("upstream job %s not deleted: HTTP %s", job_id[:64], status)
                return
            # not final yet: stop it, and wait for the system to show it stopped
            await self._call("cancel_job", "POST", f"/jobs/{job_id}/cancel")
            await asyncio.sleep(0.2)
            waited += 0.2

    async def _drop_objects(self, job_id: str) -> None:
        for kind in STORAGE:
            await self.store.delete(key(kind, job_id))

    # --- sessions (kept here: the system has none) ----------------------------------------

    def _session(self, session_id: str) -> SessionRecord | Reply:
        sess = self.sessions.get(session_id)
        if sess is None:
            return runtime_error(404, f"Session not found: {session_id[:64]}", 1404)
        return sess

    async def create_session(self, body: dict[str, Any]) -> Reply:
        mode = body.get("mode", "dedicated")
        if mode not in ("dedicated", "batch"):
            return runtime_error(400, f"Invalid session mode {str(mode)[:32]!r} (dedicated "
                                 "or batch).", 1400)
        backend = body.get("backend")
        if not isinstance(backend, str) or not backend:
            return runtime_error(400, "'backend' is required.", 1400)
        status, doc = await self._backend(backend)
        if status != 200:
            return translate_error(status, doc, "session")
        ttl = body.get("max_ttl")
        sess = SessionRecord(str(uuid.uuid4()), backend, mode,
                             ttl if isinstance(ttl, int) and ttl > 0 else 28800)
        self.sessions[sess.id] = sess
        out = {"id": sess.id, "mode": mode, "backend_name": backend}
        return Reply(200, out, jsonx.dumps(out))

    async def get_session(self, session_id: str) -> Reply:
        sess = self._session(session_id)
        if isinstance(sess, Reply):
            return sess
        doc = sess.to_api([j for j in self.jobs.values() if j.session_id == session_id])
        return Reply(200, doc, jsonx.dumps(doc))

    async def update_session(self, session_id: str, body: dict[str, Any]) -> Reply:
        sess = self._session(session_id)
        if isinstance(sess, Reply):
            return sess
        if "accepting_jobs" in body:
            if not isinstance(body["accepting_jobs"], bool):
                return runtime_error(400, "'accepting_jobs' must be a boolean.", 1400)
            if body["accepting_jobs"] and sess.state == "closed":
                return runtime_error(409, f"Session {sess.id} is closed.", 1400)
            sess.accepting_jobs = body["accepting_jobs"]
            if not sess.accepting_jobs and sess.state == "open":
                sess.state = "inactive"
        if isinstance(body.get("max_ttl"), int):
            sess.max_ttl = body["max_ttl"]
        return Reply(204)

    async def close_session(self, session_id: str) -> Reply:
        """Close it and cancel its unfinished jobs, as the Runtime API does."""
        sess = self._session(session_id)
        if isinstance(sess, Reply):
            return sess
        sess.accepting_jobs, sess.state, sess.closed = False, "closed", time.time()
        for job in list(self.jobs.values()):
            if job.session_id == session_id and not is_final(job.status):
                await self.cancel_job(job.id)
        return Reply(204)

    # --- the instance ---------------------------------------------------------------------

    async def instance_usage(self) -> Reply:
        """What this proxy's jobs used (the system reports no instance-wide figure)."""
        used = sum(j.quantum_ns for j in self.jobs.values()) / 1e9
        body = {"instance_id": self.settings.instance, "plan_id": "on-prem",
                "usage_consumed_seconds": round(used), "usage_limit_reached": False,
                "usage_limit_seconds": None, "usage_allocation_seconds": None}
        return Reply(200, body, jsonx.dumps(body))

    async def token(self, force: bool = False) -> str:
        return await self.http.token(force)

    async def close(self) -> None:
        tasks = [j.retry for j in self.jobs.values() if j.retry is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.http.close()
        await self.store.close()


def _code(doc: Any) -> str | None:
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code = errors[0].get("code")
        return str(code) if code is not None else None
    return None


def _device_status(doc: dict[str, Any]) -> DeviceStatus:
    """``GET /v1/backends/{b}``: status online/offline/paused, ``locked`` = reserved."""
    word = str(doc.get("status") or "unknown")[:40]
    online = word.lower() == "online"
    return DeviceStatus(online, "active" if online else word,
                        str(doc.get("message") or "")[:200], None, doc.get("locked") is True)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


if TYPE_CHECKING:  # mypy: this class is an Upstream (base.py)
    _IS_AN_UPSTREAM: type[Upstream] = QuantumSystemUpstream
