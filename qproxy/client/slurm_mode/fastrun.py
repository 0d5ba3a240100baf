"""Job-side fast path: submit an ISA payload to the job's proxy with the standard library only.

Why: in a primitive job the lane is held from the job's start, and most of qrun's time there
is Python importing qiskit and building the backend (~1.7 s on a small node) — lane time the
QPU spends idle. When the client already transpiled the PUBs (payload ``transpile: false``,
against a cached copy of the device's target), nothing in the job needs qiskit: the payload's
PUBs are already the client's RuntimeEncoder JSON, so they are forwarded verbatim as the
program's ``params.pubs``, and the result body (RuntimeEncoder JSON of the PrimitiveResult,
the same format qrun writes) is stored as is. Same contract as qrun: OUTPUT appears
atomically and only on success; failures are one ``qrun: error:`` line and exit 1.

Run as a script (``python fastrun.py KIND PAYLOAD OUTPUT``) so the package's qiskit-importing
``__init__`` is never loaded. Uses only the task environment the SPANK plugin sets.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

PROGRAMS = {"sample": "sampler", "estimate": "estimator"}
FINAL = {"Completed", "Failed", "Cancelled", "Cancelled - Ran too long"}
API_VERSION = "2025-05-01"


class RunError(Exception):
    pass


class Busy(RunError):
    """HTTP 429 from the proxy (or the upstream behind it): ask again later."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _request(method: str, url: str, headers: dict[str, str], body: bytes | None = None,
             timeout: float = 60) -> bytes:
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        msg = f"{method} {url}: HTTP {exc.code}: {' '.join(detail.split())[:400]}"
        if exc.code == 429:
            try:
                retry = float(exc.headers.get("Retry-After") or 1.0)
            except ValueError:
                retry = 1.0
            raise Busy(msg, min(max(retry, 0.1), 30.0)) from None
        raise RunError(msg) from None
    except OSError as exc:
        raise RunError(f"{method} {url}: {exc}") from None


# Status polls go to the job's own proxy on loopback, so they can be frequent: the lane is
# held until this process notices the end, and every poll interval is lane time lost (a 0.5 s
# cap cost ~0.25 s per call). A 429 (an upstream rate limit passed through) slows us down.
POLL_FIRST, POLL_MAX = 0.02, 0.1


def _wait_final(base: str, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
    delay = POLL_FIRST
    while True:
        try:
            info: dict[str, Any] = json.loads(_request(
                "GET", f"{base}/jobs/{job_id}?exclude_params=true", headers))
        except Busy as exc:
            time.sleep(exc.retry_after)
            continue
        if _status(info) in FINAL:
            return info
        time.sleep(delay)
        delay = min(delay * 1.5, POLL_MAX)


def _headers() -> dict[str, str]:
    env = os.environ
    try:
        iam, token = env["IAM_URL"].rstrip("/"), env["QISKIT_IBM_TOKEN"]
    except KeyError as exc:
        raise RunError(f"{exc.args[0]} is not set: not inside a QPU job?") from None
    body = urllib.parse.urlencode({
        "grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": token}).encode()
    doc = json.loads(_request("POST", f"{iam}/identity/token", {
        "Content-Type": "application/x-www-form-urlencoded"}, body))
    return {"Authorization": f"Bearer {doc['access_token']}",
            "Service-CRN": env.get("QISKIT_IBM_INSTANCE", ""),
            "IBM-API-Version": API_VERSION, "Content-Type": "application/json"}


def _status(doc: dict[str, Any]) -> str:
    state = doc.get("state")
    return str((state or {}).get("status") if isinstance(state, dict) else doc.get("status"))


def run(kind: str, payload: Path, output: Path) -> None:
    doc = json.loads(payload.read_text())
    if doc.get("transpile", True):
        raise RunError("fastrun needs an ISA payload (transpile: false)")
    backend = doc.get("backend") or os.environ.get("QPU_BACKEND")
    if not backend:
        raise RunError("no backend in the payload and QPU_BACKEND is not set")
    base = os.environ.get("QISKIT_IBM_URL", "").rstrip("/")
    headers = _headers()
    params = {"pubs": doc["pubs"], "version": 2, "support_qiskit": True,
              "options": doc.get("options") or {}}
    body = json.dumps({"program_id": PROGRAMS[kind], "backend": backend,
                       "params": params}).encode()
    job_id = json.loads(_request("POST", f"{base}/jobs", headers, body))["id"]

    def cancel(_sig: int, _frame: Any) -> None:  # scancel / time limit: do not leave it
        try:
            _request("POST", f"{base}/jobs/{job_id}/cancel", headers, b"{}", timeout=5)
        finally:
            sys.exit(143)

    signal.signal(signal.SIGTERM, cancel)
    info = _wait_final(base, job_id, headers)
    status = _status(info)
    if status != "Completed":
        reason = (info.get("state") or {}).get("reason") if isinstance(
            info.get("state"), dict) else ""
        raise RunError(f"upstream job {job_id} {status}: {reason or ''}".strip())
    data = _request("GET", f"{base}/jobs/{job_id}/results", headers, timeout=300)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, output)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in PROGRAMS:
        print("usage: fastrun.py sample|estimate PAYLOAD OUTPUT", file=sys.stderr)
        return 2
    try:
        run(argv[0], Path(argv[1]), Path(argv[2]))
    except (RunError, OSError, ValueError, KeyError) as exc:
        print(f"qrun: error: {argv[0]} failed: {exc}", file=sys.stderr)
        return 1
    print(f"qrun: wrote {argv[2]} (fast path)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
