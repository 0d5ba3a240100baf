"""The IBM Quantum (Qiskit Runtime) REST API's vocabulary, owned here once: path prefixes, job
states, how a status is read from a job document, and the error body. The proxy, the emulator
and the job-side fast path all speak it, so it is standard library only (the Slurm-mode fast
path imports it under ``python -I -S``).

Facts checked against qiskit-ibm-runtime 0.49-0.51 (DESIGN.md): job documents carry the state
either as ``status`` or as ``state.status``; the client compares states case-insensitively;
errors are ``{"errors": [{"code", "message", "more_info"}], "trace"}``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

# Where the Runtime API is served (the real service) and where the unmodified client sends it
# when QISKIT_IBM_URL contains "experimental" (see qproxy.clientenv).
RUNTIME_PREFIX = "/api/v1"
CLIENT_RUNTIME_PREFIX = "/experimental/api/v1"
API_PREFIXES = (RUNTIME_PREFIX, CLIENT_RUNTIME_PREFIX)
# The IAM API-key exchange, relative to IAM_URL.
IAM_TOKEN_PATH = "/identity/token"
API_VERSION_HEADER = "IBM-API-Version"
# Headers of a job's request worth passing on (never Authorization / Service-CRN), and of an
# answer (a multi-node job's relay passes both, qproxy.proxy.relay.process).
REQUEST_HEADERS = (API_VERSION_HEADER, "Content-Type", "Accept")
RESPONSE_HEADERS = ("Content-Type", "Content-Disposition")
# The API version we send when a client did not choose one.
DEFAULT_API_VERSION = "2025-05-01"

# Job states as the service spells them.
QUEUED = "Queued"
RUNNING = "Running"
COMPLETED = "Completed"
FAILED = "Failed"
CANCELLED = "Cancelled"
# The service's spelling for a job stopped at its time limit.
CANCELLED_TIMEOUT = "Cancelled - Ran too long"
ACTIVE_STATES = frozenset({QUEUED, RUNNING})
FINAL_STATES = frozenset({COMPLETED, FAILED, CANCELLED, CANCELLED_TIMEOUT})
# Compared lower-case, as the client does; "error" is the client-side name of a failed job
# that some API versions also return.
_FINAL_LOWER = frozenset(s.lower() for s in FINAL_STATES) | {"error"}


def is_final(status: object) -> bool:
    """Whether a job state (any case) is final: the job will not run again."""
    return isinstance(status, str) and status.lower() in _FINAL_LOWER


def job_status(doc: Any) -> str | None:
    """A job document's state: ``status`` or ``state.status``, whichever the API version uses."""
    if not isinstance(doc, dict):
        return None
    status = doc.get("status")
    if status is None and isinstance(doc.get("state"), dict):
        status = doc["state"].get("status")
    return status if isinstance(status, str) else None


def parse_time(value: str) -> float | None:
    """An API timestamp (ISO 8601, ``Z`` or an offset; naive is UTC, as the client sends
    ``created_after``/``created_before``) as epoch seconds, or None if it does not parse."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def new_trace_id() -> str:
    """The ``trace`` of an error body: what a user quotes and an admin greps the logs for."""
    return uuid.uuid4().hex


def error_body(status: int, message: str, code: int | str | None = None, *,
               more_info: str, trace: str | None = None) -> dict[str, Any]:
    """The JSON body IBM's Runtime API uses for errors (``RequestsApiError`` parses it)."""
    return {
        "errors": [{"code": code if code is not None else status, "message": message,
                    "more_info": more_info}],
        "trace": trace or new_trace_id(),
        "status_code": status,
    }
