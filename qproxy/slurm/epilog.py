"""Job epilog (root) and the reaper's per-job teardown: stop the proxy, cancel leftovers from
the ledger, release the lease, finish the audit log, record QPU usage. Never raises: a failing
epilog drains the node."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from qproxy.config import Config
from qproxy.node import usagelog
from qproxy.records import JobSummary, UsageRecord
from qproxy.slurm import lease, proxyproc
from qproxy.slurm.state import JobState, audit_stem, ensure_private_dir, log


def _read_summary(path: Path) -> JobSummary | None:
    try:
        return JobSummary.from_json(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def _leftovers(config: Config, resource: str, job: JobState) -> dict[str, Any]:
    from qproxy.upstream.leftovers import cleanup_job

    return cleanup_job(config, resource, job.ledger)


def _audit_end(config: Config, job_id: str, fields: dict[str, Any],
               stem: str) -> str | None:
    from qproxy.node.audit import AuditLog

    path = config.audit_dir / f"{stem}.jsonl"
    # A log the proxy started names its key in its first record; one the epilog starts (the
    # proxy never ran) is chained with the centre's key too, and says so in that record.
    new = not path.exists() or path.stat().st_size == 0
    key = _usage_key(config) if new else None
    audit = AuditLog(path, structured=False, job_id=job_id, key=key,
                     key_file=config.audit_key_file if key else None)
    try:
        audit.record("job_end", **(audit.chain_fields() if key else {}), **fields)
        return audit.head
    finally:
        audit.close()


def _usage_key(config: Config) -> bytes | None:
    """The audit key chains usage.jsonl too (the proxy made it at its start)."""
    from qproxy.node.audit import AuditKeyError, load_key

    try:
        return load_key(config.audit_key_file, create=True)
    except AuditKeyError:
        log.exception("audit key unusable: usage.jsonl is chained without it")
        return None


def finish(config: Config, job_id: str, reason: str) -> UsageRecord:
    """Tear down everything job_id holds on this node; returns the usage record.

    The usage line goes to {audit_dir}/usage.jsonl, not AdminComment: on 22.05 slurmctld
    refuses ``scontrol update job=N AdminComment=..`` once the job is completing ("Job has
    already finished"), which is always the case in the epilog. The prolog sets
    AdminComment to the backend/lanes while the job runs."""
    job = JobState.of(config, job_id)
    record = job.read_record()
    resource = record.resource if record else ""
    proxy = proxyproc.recorded(record) if record else None
    stopped = (proxyproc.stop(proxy.pid, job_id, spare=proxy.spare, start=proxy.start)
               if proxy else "absent")
    summary = _read_summary(job.summary) if stopped != "killed" else None
    relay = record is not None and record.role == "relay"
    stem = audit_stem(job_id, record.node or "?" if record and relay else "")
    if summary is None and resource and not relay:  # a relay's ledger is the primary's
        try:  # proxy died or was killed: cancel leftovers from the ledger ourselves
            summary = JobSummary.from_cleanup(_leftovers(config, resource, job), by="epilog")
        except Exception as exc:
            log.exception("job %s: cleanup of leftovers failed", job_id)
            summary = JobSummary(error=f"cleanup failed: {type(exc).__name__}")
    summary = summary or JobSummary()
    usage = UsageRecord(
        job_id=job_id, reason=reason, resource=resource,
        lanes=record.lanes if record else None, user=record.user if record else None,
        time=time.time(), proxy=stopped, upstream_jobs=summary.upstream_jobs,
        quantum_seconds=summary.quantum_seconds,
        cancelled_at_shutdown=summary.cancelled_at_shutdown, bytes_in=summary.bytes_in,
        bytes_out=summary.bytes_out, by=summary.by, error=summary.error,
        role=record.role if record and record.role != "single" else None,
        started=record.started or None if record else None,
        account=record.account or None if record else None,
        node=record.node or None if record else None)
    try:
        lease.release(config, job_id)
    except OSError:
        log.exception("job %s: lease release failed", job_id)
    if resource:
        line = usage.line()
        end = usagelog.fields_of(usage)
        try:
            usage = replace(usage, usage=line, audit_head=_audit_end(config, job_id, end, stem))
        except Exception:
            log.exception("job %s: finishing the audit log failed", job_id)
            usage = replace(usage, usage=line)
        # booked completely: every upstream job's figure read and the line written (else
        # qproxy_usage_unbooked_total counts the run: an alert, docs/operations.md)
        booked = summary.error is None and summary.cleanup != "incomplete"
        try:
            ensure_private_dir(config.audit_dir)
            usagelog.append(config.audit_dir / usagelog.FILE_NAME, usage, _usage_key(config))
        except OSError:
            log.exception("job %s: writing usage.jsonl failed", job_id)
            booked = False
        log.info("job %s: %s (%s, proxy %s)", job_id, line, reason, stopped)
        # where admins look (sacct -o AdminComment); a relay's line (no upstream usage of its
        # own) must not overwrite the primary's
        if config.accounting.admin_comment and not relay:
            from qproxy.slurmcli.admincomment import book_admin_comment

            booked = book_admin_comment(
                job_id, line, config.accounting.sacctmgr_timeout_seconds,
                str(config.state_dir / "hooks.log")) and booked
        if not booked:
            try:
                from qproxy.node.metricsstore import unbooked

                unbooked(config.state_dir, job_id, resource)
            except OSError:
                log.exception("job %s: counting its unbooked usage failed", job_id)
    try:  # keep the proxy's log next to the audit log; the job dir (token!) goes away
        if job.proxy_log.exists():
            ensure_private_dir(config.audit_dir)
            os.replace(job.proxy_log, config.audit_dir / f"{stem}.proxy.log")
    except OSError:
        log.exception("job %s: keeping the proxy log failed", job_id)
    if job.metrics.exists():  # the node's totals keep the ended proxy's
        try:
            from qproxy.node.metricsstore import retire

            retire(config.state_dir, job.root)
        except OSError:
            log.exception("job %s: retiring its metrics failed", job_id)
    job.remove()
    return usage
