"""Session policy: how many sessions a job holds open, in which mode, and what it may change.

A session reserves the device for the job's work, so open sessions count against the job's
lanes: at most N accepting jobs at once (closing one, or ``PATCH accepting_jobs=false`` as
the client's ``Session.close()`` sends, frees its slot). ``dedicated`` mode (the whole device
for one user) only where the admin allows it (``[resources.X].dedicated_sessions``);
elsewhere a request for it is turned into ``batch``, so an unmodified ``Session(...)`` (whose
default is dedicated) keeps working. ``PATCH /sessions/{id}`` bodies carry only what
qiskit-ibm-runtime sends (``accepting_jobs``) and ``max_ttl``, which the time-limit policy
clamps; anything else is refused.
"""

from __future__ import annotations

from typing import Any

from qproxy.proxy.policy.errors import PolicyError

PATCHABLE = frozenset({"accepting_jobs", "max_ttl"})
MODES = frozenset({"batch", "dedicated"})


class SessionPolicy:
    def __init__(self, limit: int, dedicated_allowed: bool) -> None:
        self.limit = limit
        self.dedicated_allowed = dedicated_allowed
        self.open: set[str] = set()

    def check_new(self, body: dict[str, Any]) -> dict[str, Any]:
        """Before ``POST /sessions`` (or a job that starts one): slots and mode."""
        if len(self.open) >= self.limit:
            raise PolicyError(429, f"this Slurm job already has {len(self.open)} open "
                                   f"session(s), its limit (one per lane); close one first")
        mode = body.get("mode", "batch")
        if mode is not None and mode not in MODES:
            raise PolicyError(400, f"unknown session mode {str(mode)[:32]!r}")
        if mode == "dedicated" and not self.dedicated_allowed:
            body["mode"] = "batch"
            return {"mode_requested": "dedicated", "mode": "batch"}
        return {}

    def opened(self, sid: str) -> None:
        self.open.add(sid)

    def closed(self, sid: str) -> None:
        self.open.discard(sid)

    @staticmethod
    def check_patch(body: dict[str, Any]) -> None:
        unknown = sorted(set(body) - PATCHABLE)
        if unknown:
            raise PolicyError(400, "a session update may only change "
                                   f"{', '.join(sorted(PATCHABLE))}; got {unknown[:4]}")
        if "accepting_jobs" in body and not isinstance(body["accepting_jobs"], bool):
            raise PolicyError(400, "accepting_jobs must be true or false")
