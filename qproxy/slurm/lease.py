"""Per-node lane leases: ``{state_dir}/leases.json`` ({resource: {job: lanes}}) under an
flock. Slurm's GRES/licence counts already keep jobs pending; the lease is the node's own
guarantee that a device's lanes are never handed out twice (e.g. GRES counts shared by
several devices, or a leftover from a job whose epilog never ran)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qproxy.config import Config, Resource
from qproxy.files import exclusive_lock
from qproxy.slurm.state import ensure_private_dir, write_private

Leases = dict[str, dict[str, int]]


class LanesBusy(RuntimeError):
    def __init__(self, message: str, holders: list[str]) -> None:
        super().__init__(message)
        self.holders = holders


@contextmanager
def _locked(config: Config) -> Iterator[tuple[Path, Leases]]:
    ensure_private_dir(config.state_dir)
    path = config.state_dir / "leases.json"
    with exclusive_lock(config.state_dir / "leases.lock"):
        try:
            data = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            data = {}
        leases: Leases = {k: dict(v) for k, v in data.items() if isinstance(v, dict)}
        yield path, leases
        write_private(path, json.dumps(leases, sort_keys=True) + "\n")


def acquire(config: Config, resource: Resource, job_id: str, lanes: int) -> None:
    with _locked(config) as (_, leases):
        held = leases.setdefault(resource.name, {})
        # an entry without a job dir is a leftover (its state was reaped): drop it
        for other in [j for j in held if not (config.state_dir / j).is_dir()]:
            del held[other]
        held.pop(job_id, None)
        used = sum(held.values())
        if used + lanes > resource.lanes:
            users = ", ".join(f"job {j} ({n})" for j, n in sorted(held.items()))
            raise LanesBusy(
                f"QPU {resource.name} is busy: {used} of its {resource.lanes} lanes are in use "
                f"on this node ({users}); request them through Slurm (--gres=qpu:N or "
                f"-L {resource.name}:N) so the job waits instead",
                sorted(held),
            )
        held[job_id] = lanes


def release(config: Config, job_id: str) -> None:
    with _locked(config) as (_, leases):
        for held in leases.values():
            held.pop(job_id, None)


def held(config: Config) -> Leases:
    with _locked(config) as (_, leases):
        return {k: dict(v) for k, v in leases.items()}


def peek(config: Config) -> Leases:
    """The leases as they are, read without the lock and without writing anything (for
    ``qproxy status`` and the reaper's plan: a reader must not create or rewrite state)."""
    try:
        data = json.loads((config.state_dir / "leases.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): {str(j): n for j, n in v.items() if isinstance(n, int)}
            for k, v in data.items() if isinstance(v, dict)}
