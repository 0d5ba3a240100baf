"""Fail closed on auditing: authenticated work the audit log cannot record is not done.

When the job's audit log is full (``[proxy].audit_max_bytes``) or its disk refuses writes
(ENOSPC), every authenticated request gets 503 in the API's error shape saying so, and the
proxy keeps answering (unauthenticated requests still get their 401/429). Doing the work and
dropping its record instead would let a job outrun its own audit trail by filling the disk.
"""

from __future__ import annotations

from qproxy.node.audit import AuditLog
from qproxy.proxy.policy.errors import PolicyError


def refuse_unaudited(audit: AuditLog) -> None:
    why = audit.available()
    if why is not None:
        raise PolicyError(503, f"{why}; the QPU proxy refuses work it cannot audit "
                               "(tell the centre's admins)")
