"""The proxies' own cgroup: every process the hooks start (a spare, a job's proxy, a relay)
enters ``qproxy`` at the root of each cgroup hierarchy mounted on the node before it runs any
of our code, so no proxy ever lives in a user's job cgroup.

Why: a process is born in its parent's cgroup, and the hooks run wherever Slurm runs the job
prolog. Where that is the job's cgroup (a prolog run inside the job, e.g. 24.05+'s
``PrologFlags=RunInJob`` for a ``Prolog=`` script, or a centre's wrapper), the job's end
(``scancel``, proctrack/cgroup killing every process of the job) or an OOM in the job's
memory limit would kill its proxy before the epilog cancels its upstream jobs -- and the
proxies of B, C, ... of other users that the spare started by job A's prolog forks. Measured
on this project's clusters (cgroup v1, 22.05/24.11/26.05, ``PrologFlags=Alloc`` with or
without ``Contain``) the SPANK job prolog runs in slurmd's cgroup instead, where the proxies
then share slurmd's limits and fate; in ``qproxy`` they have neither. One cgroup for all
proxies, not one each: cgroup v1 never removes an empty cgroup by itself, so per-job cgroups
would need a reaper, and one node-wide group is where an admin can cap them all (e.g.
``memory.limit_in_bytes``). Entering costs one ``write`` per hierarchy (~10 here).

Which mount of a hierarchy: the one with the deepest root (a delegated subtree, as the
local clusters' own views; a real node has one mount each). Best effort: a proxy that cannot
move still runs (the job is not failed for it), and says why in its log.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

NAME = "qproxy"  # [proxy].cgroup's default
MOUNTINFO = "/proc/self/mountinfo"
FLAGS = ("rw", "ro", "xattr", "noprefix", "clone_children", "cpuset_v2_mode")  # not controllers


class Mount(NamedTuple):
    point: str  # where it is mounted
    root: str  # which cgroup of the hierarchy is the mount's root
    hierarchy: str  # "cgroup2", or the v1 controllers/name, e.g. "freezer", "cpu,cpuacct"


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape")


def mounts(mountinfo: str) -> list[Mount]:
    """Per hierarchy, the mount with the deepest root (mountinfo(5) text)."""
    best: dict[str, Mount] = {}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        if tail[0] == "cgroup2":
            hierarchy = "cgroup2"
        else:
            hierarchy = ",".join(sorted(o for o in tail[2].split(",") if o not in FLAGS
                                        and ("=" not in o or o.startswith("name="))))
        m = Mount(_unescape(fields[4]), _unescape(fields[3]), hierarchy)
        old = best.get(hierarchy)
        if old is None or len(m.root.rstrip("/")) > len(old.root.rstrip("/")):
            best[hierarchy] = m
    return list(best.values())


def enter(name: str = NAME, pid: int = 0, mountinfo: str | None = None) -> list[str]:
    """Move PID (0: this process) into the cgroup NAME at the root of every hierarchy; the
    problems, one line each (none: done, or no cgroup fs mounted here)."""
    if mountinfo is None:
        try:
            mountinfo = Path(MOUNTINFO).read_text()
        except OSError as exc:
            return [f"cannot read {MOUNTINFO}: {exc}"]
    problems = []
    for m in mounts(mountinfo):
        group = os.path.join(m.point, name)
        try:
            try:
                os.mkdir(group, 0o755)
            except FileExistsError:
                pass
            st = os.lstat(group)
            if st.st_uid != 0 or st.st_mode & 0o022:  # only root may put processes here
                problems.append(f"cgroup {group} is not root's alone; not entered")
                continue
            fill_cpuset(group)
            with open(os.path.join(group, "cgroup.procs"), "w") as f:
                f.write(str(pid or os.getpid()))
        except OSError as exc:
            problems.append(f"cannot enter cgroup {group}: {exc.strerror or exc}")
    return problems


def fill_cpuset(group: str) -> None:
    """A new v1 cpuset cgroup has no CPUs and memory nodes, and a process cannot join it
    (ENOSPC): give it its parent's."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        path = os.path.join(group, name)
        try:
            with open(path) as f:
                if f.read().strip():
                    continue
        except FileNotFoundError:
            return  # not a cpuset hierarchy
        with open(os.path.join(os.path.dirname(group), name)) as f:
            value = f.read().strip()
        with open(path, "w") as f:
            f.write(value)


def in_jobs(pid: int) -> list[str]:
    """The cgroups of PID that belong to a Slurm job (``.../job_N...``), for checks."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return []
    return [line for line in text.splitlines()
            if any(part.startswith("job_") for part in line.split(":", 2)[-1].split("/"))]
