"""Jobs in real cgroups, as centres run them: each cluster's Slurm gets a cgroup view of its
own, and the cluster runs proctrack/cgroup + task/cgroup on it.

What this machine has (measured 2026-12): the cgroup v1 controllers each mounted on their
own hierarchy under /sys/fs/cgroup plus cgroup2 on /sys/fs/cgroup/unified with no controller
(all are bound to v1). So Slurm's cgroup/v2 cannot run here (24.11's slurmd stops with
"Hybrid mode is not supported" once /proc/self/cgroup lists v1 hierarchies) and cgroup/v1 is
what all three releases get: 22.05 and 24.11 run it, 26.05 runs it with "cgroup/v1 plugin is
deprecated". Where the daemons run, nothing is mounted: `ip netns exec` replaces /sys with a
fresh sysfs and the chroots get a sysfs of their own, so /sys/fs/cgroup is an empty
directory there. Which hierarchies exist is therefore read from /proc/self/cgroup (the
kernel's list, the same in every mount namespace), never from whether /sys/fs/cgroup is a
directory.

Each cluster must have a cgroup tree of its own: the three releases' clusters run side by
side with the same node name (single node: the host name; several: qnode1..N) and the same
job ids, and Slurm's v1 tree is `slurm_<node>/uid_U/job_J` from the mount's root, so shared
hierarchies would mix their jobs (one cluster's job end would kill another's job of the same
id). So: a subtree `qproxy-<state dir name>-<hash>` below the cgroup `up` runs in
(delegation: the cluster stays inside whatever contains the person or CI runner that started
it), each hierarchy mounted on its own with that subtree bound at STATE/cgroup/<hierarchy>
(`CgroupMountpoint=` in cgroup.conf, "for development and testing"). Mounts below the state
dir survive `ip netns exec` (which only replaces /sys) and the node namespaces' `unshare
--mount`; the chroots get them bound at the same path. The subtrees are recorded in
STATE/cgroup.json, so `down`, from whatever mount namespace, kills what is left inside them
and removes them.

QPROXY_CLUSTER_CGROUPS=0 runs without cgroups (proctrack/linuxproc, task/none) as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from qproxy.node.cgroup import fill_cpuset
from scripts.localcluster.settings import Settings
from scripts.localcluster.system import log

# what Slurm's cgroup/v1 needs here: proctrack/cgroup (freezer) and task/cgroup (memory)
NEEDED = ("freezer", "memory")
V2 = "cgroup2"  # the unified hierarchy, bound as STATE/cgroup/unified (qproxy's cgroup there)


@dataclass(frozen=True)
class Hierarchy:
    """One v1 hierarchy of the kernel (from /proc/self/cgroup) as this cluster uses it."""

    controllers: tuple[str, ...]  # e.g. ("cpu", "cpuacct") where co-mounted
    subtree: str  # the cluster's cgroup in it, from the hierarchy's root

    @property
    def dirname(self) -> str:
        return "unified" if self.controllers == (V2,) else ",".join(self.controllers)


def kernel_hierarchies(text: str) -> dict[tuple[str, ...], str]:
    """{controllers: this process's cgroup} of the v1 controller hierarchies in a
    /proc/PID/cgroup text, plus ("cgroup2",) for the unified one (named v1 hierarchies such
    as name=systemd left out: nothing of ours uses them)."""
    found: dict[tuple[str, ...], str] = {}
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        if hid == "0":
            found[(V2,)] = path or "/"
        elif ctrls and not ctrls.startswith("name="):
            found[tuple(sorted(ctrls.split(",")))] = path or "/"
    return found


def tag(s: Settings) -> str:
    """The subtree's name: the state dir's name plus a hash of its path (two clones'
    clusters of the same name never share one)."""
    digest = hashlib.sha256(str(s.state).encode()).hexdigest()[:8]
    return f"qproxy-{s.state.name}-{digest}"


def record_path(s: Settings) -> Path:
    return s.state / "cgroup.json"


def mountpoint(s: Settings) -> Path:
    """cgroup.conf's CgroupMountpoint: STATE/cgroup (the same path inside a chroot)."""
    return s.state / "cgroup"


def recorded(s: Settings) -> list[Hierarchy]:
    try:
        data = json.loads(record_path(s).read_text())
    except (OSError, ValueError):
        return []
    return [Hierarchy(tuple(h["controllers"]), h["subtree"]) for h in data]


def wanted() -> bool:
    return os.environ.get("QPROXY_CLUSTER_CGROUPS", "1").lower() not in ("0", "no", "off")


def _mounted(path: Path) -> bool:
    target = str(path)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4].encode().decode("unicode_escape") == target:
            return True
    return False


def _mount(*args: str) -> None:
    out = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise OSError(f"mount {' '.join(args)}: {out.stderr.strip() or out.returncode}")


def _with_root(controllers: tuple[str, ...], scratch: Path) -> None:
    """Mount the whole hierarchy of CONTROLLERS at SCRATCH (the same hierarchy the host
    mounts: a v1 mount with the same controllers joins it)."""
    scratch.mkdir(parents=True, exist_ok=True)
    if controllers == (V2,):
        _mount("-t", "cgroup2", "qproxy-cgroup", str(scratch))
    else:
        _mount("-t", "cgroup", "-o", ",".join(controllers), "qproxy-cgroup", str(scratch))


def setup(s: Settings) -> bool:
    """Give this cluster its cgroup view (idempotent); whether jobs run in cgroups. Any
    problem (no v1 freezer+memory, mounting refused as in a container without
    CAP_SYS_ADMIN) is one line and the cluster runs without cgroups, as before."""
    if not wanted():
        return False
    kernel = kernel_hierarchies(Path("/proc/self/cgroup").read_text())
    have = {c for ctrls in kernel for c in ctrls}
    missing = [c for c in NEEDED if c not in have]
    if missing:
        log(f"no cgroup v1 {', '.join(missing)} hierarchy on this kernel: jobs run without"
            " cgroups (proctrack/linuxproc)")
        return False
    hierarchies = recorded(s) or [
        Hierarchy(ctrls, f"{path.rstrip('/')}/{tag(s)}") for ctrls, path in sorted(kernel.items())]
    base = mountpoint(s)
    scratch = base / ".root"
    try:
        base.mkdir(mode=0o755, exist_ok=True)
        for h in hierarchies:
            target = base / h.dirname
            if _mounted(target):
                continue
            _with_root(h.controllers, scratch)
            try:
                level = scratch
                for part in Path(h.subtree).parts[1:]:
                    level = level / part
                    level.mkdir(exist_ok=True)
                    fill_cpuset(str(level))  # else nothing can join it (ENOSPC)
                target.mkdir(exist_ok=True)
                _mount("--bind", str(scratch / h.subtree.lstrip("/")), str(target))
            finally:
                subprocess.run(["umount", str(scratch)], check=False)
            for c in h.controllers if h.controllers != (V2,) else ():
                link = base / c  # Slurm looks for CgroupMountpoint/<controller>
                if c != h.dirname and not link.is_symlink():
                    link.symlink_to(h.dirname)
    except OSError as exc:
        log(f"cgroups unusable here ({exc}): jobs run without cgroups")
        unmount(s)
        return False
    record_path(s).write_text(json.dumps(
        [{"controllers": list(h.controllers), "subtree": h.subtree} for h in hierarchies]))
    return True


def bind_into(s: Settings, root: Path) -> None:
    """The view at the same path inside a chroot (its bind of the state dir is not
    recursive)."""
    for h in recorded(s):
        src = mountpoint(s) / h.dirname
        inside = root / src.relative_to("/")
        if _mounted(src) and not _mounted(inside):
            inside.mkdir(parents=True, exist_ok=True)
            _mount("--bind", str(src), str(inside))


def unmount(s: Settings) -> None:
    """Unmount the view in this mount namespace (what is mounted here of it)."""
    base = mountpoint(s)
    for d in sorted(base.glob("*")) if base.is_dir() else []:
        if d.is_symlink():
            continue
        if _mounted(d):
            subprocess.run(["umount", "-l", str(d)], check=False)


def _procs(tree: Path) -> list[int]:
    pids = []
    for procs in tree.rglob("cgroup.procs"):
        try:
            pids += [int(p) for p in procs.read_text().split()]
        except (OSError, ValueError):
            continue
    return pids


def teardown(s: Settings) -> None:
    """Kill what is left in the cluster's subtrees (job steps, proxies: all this cluster's,
    e.g. after a killed test run), remove the subtrees and unmount the view."""
    hierarchies = recorded(s)
    unmount(s)
    if not hierarchies:
        return
    scratch = mountpoint(s) / ".root"
    left: list[tuple[Hierarchy, str]] = []
    for h in hierarchies:
        try:
            _with_root(h.controllers, scratch)
        except OSError as exc:
            log(f"cannot remove cgroup {h.dirname}:{h.subtree}: {exc}")
            continue
        try:
            tree = scratch / h.subtree.lstrip("/")
            if not tree.is_dir():
                continue
            deadline = time.monotonic() + 10
            while (pids := _procs(tree)) and time.monotonic() < deadline:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.05)
            for d in sorted((p for p in tree.rglob("*") if p.is_dir()),
                            key=lambda p: len(p.parts), reverse=True) + [tree]:
                try:
                    d.rmdir()
                except OSError:
                    left.append((h, str(d)))
        finally:
            subprocess.run(["umount", str(scratch)], check=False)
    if left:
        log(f"cgroups left behind: {', '.join(d for _, d in left[:3])}")
    else:
        record_path(s).unlink(missing_ok=True)
