"""The device monitor's licence reservations (root).

The device monitor (qproxy/slurm/monitor.py) holds a down device's licences in a
reservation: `Flags=LICENSE_ONLY` (22.05 shows it as ANY_NODES) reserves licences and no
node, and may be created while jobs hold some of them -- those keep running (checked on
22.05.8). New jobs asking for the licence then wait with Reason=Licenses until it is deleted.
"""

from __future__ import annotations

import re

from qproxy.slurmcli.run import SlurmError, run


def reservations() -> dict[str, dict[str, str]]:
    """``scontrol -o show reservation``: name -> its ``key=value`` fields."""
    out = run(["scontrol", "-o", "show", "reservation"])
    if out.returncode != 0:
        raise SlurmError(f"scontrol show reservation: {out.stderr.strip()[:300]}")
    found = {}
    for line in out.stdout.splitlines():
        fields = dict(re.findall(r"(\S+?)=(\S*)", line))
        if fields.get("ReservationName"):
            found[fields["ReservationName"]] = fields
    return found


def create_licence_reservation(name: str, licences: dict[str, int]) -> None:
    spec = ",".join(f"{k}:{v}" for k, v in sorted(licences.items()))
    out = run(["scontrol", "create", "reservation", f"ReservationName={name}",
               "StartTime=now", "Duration=infinite", "Users=root", f"Licenses={spec}",
               "Flags=LICENSE_ONLY"])
    if out.returncode != 0:
        raise SlurmError(f"scontrol create reservation {name}: "
                         f"{(out.stderr or out.stdout).strip()[:300]}")


def delete_reservation(name: str) -> None:
    out = run(["scontrol", "delete", f"reservation={name}"])
    if out.returncode != 0 and "not found" not in out.stderr.lower():
        raise SlurmError(f"scontrol delete reservation {name}: {out.stderr.strip()[:300]}")
