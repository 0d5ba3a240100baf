"""Tag policy: every upstream job carries who ran it, and the job cannot forge or drop that.

Upstream jobs get ``slurm_job:<id>`` and ``slurm_user:<name>`` (plus ``slurm_account:<a>``)
so the centre can attribute work in the vendor's own console. We do NOT strip them from what
the job sees: they are not secret, and hiding them would make ``job.tags`` disagree with the
vendor console. User-supplied tags starting with ``slurm_`` are dropped (no forging another
job's attribution) and ``PUT /jobs/{id}/tags`` re-adds ours.
"""

from __future__ import annotations

from typing import Any

RESERVED_PREFIX = "slurm_"


def enforced_tags(job_id: str, user: str, account: str | None = None) -> list[str]:
    tags = [f"slurm_job:{job_id}", f"slurm_user:{user}"]
    if account:
        tags.append(f"slurm_account:{account}")
    return tags


def merge_tags(user_tags: Any, enforced: list[str]) -> list[str]:
    """The job's own tags (minus reserved ones) followed by ours, without duplicates."""
    out: list[str] = []
    if isinstance(user_tags, list):
        for tag in user_tags:
            if isinstance(tag, str) and not tag.startswith(RESERVED_PREFIX) and tag not in out:
                out.append(tag)
    out.extend(t for t in enforced if t not in out)
    return out
