"""Isolation policy: a Slurm job sees only the upstream jobs and sessions it created.

All jobs of the centre share one vendor instance, so upstream lists show everybody's work.
The proxy remembers the ids it created (and persists them in the ledger); anything else is
answered 404 exactly as if it did not exist, so ids of other users' jobs are not even
confirmed.
"""

from __future__ import annotations

from typing import Any

from qproxy.proxy.policy.errors import PolicyError
from qproxy.runtime_api import is_final


class Ownership:
    def __init__(self) -> None:
        # upstream job id -> last known status
        self.jobs: dict[str, str] = {}
        self.sessions: set[str] = set()

    def add_job(self, job_id: str, status: str = "Queued") -> None:
        self.jobs[job_id] = status

    def add_session(self, session_id: str) -> None:
        self.sessions.add(session_id)

    def check_job(self, job_id: str) -> None:
        if job_id not in self.jobs:
            raise PolicyError(404, f"job {job_id} not found", code=1291)

    def check_session(self, session_id: str) -> None:
        if session_id not in self.sessions:
            raise PolicyError(404, f"session {session_id} not found", code=1297)

    def active_jobs(self) -> list[str]:
        return [j for j, s in self.jobs.items() if not is_final(s)]

    def filter_workloads(self, doc: Any) -> dict[str, Any]:
        """Keep only our jobs/sessions in a ``/workloads`` answer."""
        out = dict(doc) if isinstance(doc, dict) else {}
        items = out.get("workloads")
        mine = self.jobs.keys() | self.sessions
        out["workloads"] = [
            w for w in (items if isinstance(items, list) else [])
            if isinstance(w, dict) and w.get("id") in mine
        ]
        return out
