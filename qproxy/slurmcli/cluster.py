"""What the cluster is made of, as Slurm says: host lists, node addresses, licence totals."""

from __future__ import annotations

import re

from qproxy.slurmcli.run import SlurmError, run


def hostnames(host_list: str) -> list[str]:
    """A Slurm host list (``n[1-3],m``) expanded, in Slurm's order; a plain name needs no
    ``scontrol`` (single-node jobs, the common case)."""
    host_list = host_list.strip()
    if not host_list:
        return []
    if not any(c in host_list for c in "[],"):
        return [host_list]
    out = run(["scontrol", "show", "hostnames", host_list])
    names = out.stdout.split()
    if out.returncode != 0 or not names:
        raise SlurmError(f"scontrol show hostnames {host_list}: {out.stderr.strip()[:200]}")
    return names


def node_addr(name: str) -> str:
    """The node's NodeAddr (its cluster address); the name itself where Slurm gives none."""
    out = run(["scontrol", "-o", "show", "node", name])
    m = re.search(r"\bNodeAddr=(\S+)", out.stdout)
    if out.returncode != 0 or not m:
        raise SlurmError(f"scontrol show node {name}: {out.stderr.strip()[:200]}")
    return m.group(1) if m.group(1) not in ("(null)", "") else name


def licence_total(name: str) -> int | None:
    """The cluster's count of licence ``name``; None when Slurm has no such licence."""
    out = run(["scontrol", "-o", "show", "licenses", name])
    m = re.search(r"Total=(\d+)", out.stdout)
    return int(m.group(1)) if out.returncode == 0 and m else None
