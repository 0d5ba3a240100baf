"""Slurm job states by outcome (long spellings, as squeue/scontrol/sacct print them)."""

from __future__ import annotations

PENDING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                            "RESV_DEL_HOLD", "SUSPENDED", "STOPPED"})
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"})
DONE_STATES = frozenset({"COMPLETED"})
CANCELLED_STATES = frozenset({"CANCELLED", "REVOKED"})
TIMEOUT_STATES = frozenset({"TIMEOUT", "DEADLINE"})
NODE_FAIL_STATES = frozenset({"NODE_FAIL"})
FAILED_STATES = frozenset({"FAILED", "OUT_OF_MEMORY", "BOOT_FAIL", "PREEMPTED", "SPECIAL_EXIT"})
FINAL_STATES = DONE_STATES | CANCELLED_STATES | TIMEOUT_STATES | NODE_FAIL_STATES | FAILED_STATES
# States in which a job may still hold QPU state on a node (the reaper leaves those alone).
LIVE_STATES = PENDING_STATES | RUNNING_STATES
