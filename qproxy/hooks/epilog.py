"""Job epilog (root) and the reaper's per-job teardown: stop the proxy, cancel leftovers from
the ledger, release the lease, finish the audit log, record QPU usage. Never raises: a failing
epilog drains the node."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from qproxy.config import Config
from qproxy.hooks import lease, proxyproc
from qproxy.hooks.state import JobState, ensure_private_dir, log


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _leftovers(config: Config, resource: str, job: JobState) -> dict[str, Any]:
    from qproxy.cleanup import cleanup_job

    return cleanup_job(config, resource, job.ledger)


def _audit_end(config: Config, job_id: str, fields: dict[str, Any]) -> str | None:
    from qproxy.audit import AuditLog

    path = config.audit_dir / f"job-{job_id}.jsonl"
    audit = AuditLog(path, structured=False, job_id=job_id)
    try:
        audit.record("job_end", **fields)
        return audit.head
    finally:
        audit.close()


def usage_line(resource: str, lanes: Any, s: dict[str, Any]) -> str:
    cancelled = s.get("cancelled_at_shutdown") or []
    n_cancelled = len(cancelled) if isinstance(cancelled, list) else int(cancelled or 0)
    return (f"qpu backend={resource} lanes={lanes} upstream_jobs={s.get('upstream_jobs', 0)} "
            f"quantum_seconds={float(s.get('quantum_seconds') or 0):.3f} "
            f"cancelled={n_cancelled}")


def finish(config: Config, job_id: str, reason: str) -> dict[str, Any]:
    """Tear down everything job_id holds on this node; returns the usage record.

    The usage line goes to {audit_dir}/usage.jsonl, not AdminComment: on 22.05 slurmctld
    refuses ``scontrol update job=N AdminComment=..`` once the job is completing ("Job has
    already finished"), which is always the case in the epilog. The prolog sets
    AdminComment to the backend/lanes while the job runs."""
    job = JobState.of(config, job_id)
    record = job.read_record() or {}
    resource = str(record.get("resource") or "")
    result: dict[str, Any] = {"job_id": job_id, "reason": reason, "resource": resource,
                              "lanes": record.get("lanes"), "user": record.get("user"),
                              "time": time.time()}
    proxy = proxyproc.recorded(record)
    stopped = proxyproc.stop(proxy[0], job_id, spare=proxy[1]) if proxy else "absent"
    result["proxy"] = stopped
    summary = _read_json(job.summary) if stopped != "killed" else None
    if summary is None and resource:
        try:  # proxy died or was killed: cancel leftovers from the ledger ourselves
            summary = _leftovers(config, resource, job)
            summary["by"] = "epilog"
        except Exception as exc:
            log.exception("job %s: cleanup of leftovers failed", job_id)
            summary = {"error": f"cleanup failed: {type(exc).__name__}"}
    summary = summary or {}
    for key in ("upstream_jobs", "quantum_seconds", "cancelled_at_shutdown", "bytes_in",
                "bytes_out", "by", "error"):
        if key in summary:
            result[key] = summary[key]
    try:
        lease.release(config, job_id)
    except OSError:
        log.exception("job %s: lease release failed", job_id)
    if resource:
        line = usage_line(resource, record.get("lanes"), summary)
        result["usage"] = line
        try:
            result["audit_head"] = _audit_end(config, job_id, {
                k: v for k, v in result.items() if k not in ("time", "usage")})
        except Exception:
            log.exception("job %s: finishing the audit log failed", job_id)
        try:
            ensure_private_dir(config.audit_dir)
            fd = os.open(config.audit_dir / "usage.jsonl",
                         os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a") as fh:
                fh.write(json.dumps(result, sort_keys=True) + "\n")
        except OSError:
            log.exception("job %s: writing usage.jsonl failed", job_id)
        log.info("job %s: %s (%s, proxy %s)", job_id, line, reason, stopped)
    try:  # keep the proxy's log next to the audit log; the job dir (token!) goes away
        if job.proxy_log.exists():
            ensure_private_dir(config.audit_dir)
            os.replace(job.proxy_log, config.audit_dir / f"job-{job_id}.proxy.log")
    except OSError:
        log.exception("job %s: keeping the proxy log failed", job_id)
    job.remove()
    return result
