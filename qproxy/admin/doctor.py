"""``qproxy doctor``: check a node's qproxy installation the way the hooks will use it, and
say in one line per check what is wrong and what to do.

Checks: the admin config (every problem, see qproxy.config), the secrets file (present, root
only, holding each upstream's key), the state and audit directories, and the SPANK plugin
that plugstack.conf loads -- built for this node's Slurm? A .so built against another Slurm
major.minor is refused by slurmd ("Incompatible plugin version"), and as a `required`
plugin that fails every job on the node, QPU or not: rebuild it on every Slurm upgrade.
And no IBM ``spank_qrmi`` in the same plugstack (``include`` globs followed as slurmd does):
it puts the vendor's API key into the job's environment, the one thing qproxy keeps out of
jobs (QRMI jobs get the per-job token from qproxy under the same variable).
And the audit space: a proxy refuses work it cannot audit, so whatever fills the audit
filesystem stops every QPU job on the node. The node's audit budget (qproxy.node.auditbudget)
bounds what the jobs write; only a filesystem of audit_dir's own (or quotas on the one it
shares) bounds the other writers: a warning (``WRN``, exit status unchanged) otherwise.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

from qproxy import config as cfg

BUILT_FOR = re.compile(rb"qpu_built_for_slurm=(\d+\.\d+\.\d+)")
_VERSION = re.compile(r"(\d+\.\d+\.\d+)")


def plugin_built_for(so: Path) -> str | None:
    """The Slurm release a spank_qpu.so was compiled against (the string version.c embeds)."""
    m = BUILT_FOR.search(so.read_bytes())
    return m.group(1).decode() if m else None


def installed_slurm() -> str | None:
    """This node's Slurm release: ``slurmd -V`` (client commands need a slurm.conf)."""
    for cmd in ("slurmd", "sinfo"):
        path = shutil.which(cmd) or shutil.which(
            cmd, path="/usr/sbin:/usr/local/sbin:/usr/bin:/usr/local/bin")
        if not path:
            continue
        try:
            out = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=10,
                                 check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        if m := _VERSION.search(out):
            return m.group(1)
    return None


def major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def check_plugin(so: Path) -> tuple[bool, str]:
    try:
        built = plugin_built_for(so)
    except OSError as exc:
        return False, f"plugin {so}: cannot read ({exc.strerror})"
    if built is None:
        return False, (f"plugin {so}: no qpu_built_for_slurm string (built before qproxy 0.1.0 "
                       "or not ours): rebuild with `make -C spank_hooks install`")
    have = installed_slurm()
    if have is None:
        return False, f"plugin {so}: built for Slurm {built}; no slurmd/sinfo here to compare"
    if major_minor(built) != major_minor(have):
        return False, (f"plugin {so}: built for Slurm {built}, this node runs {have}: slurmd "
                       "will refuse it and fail every job; rebuild with `make -C spank_hooks "
                       "install` against this Slurm's headers")
    return True, f"plugin {so}: built for Slurm {built}, node runs {have}"


def plugstack_entries(plugstack: Path, _depth: int = 0) -> list[tuple[Path, Path]]:
    """(plugin, the file naming it) of every ``required|optional PATH args...`` line of a
    plugstack.conf and of the files its ``include GLOB`` lines name (a relative glob is taken
    from the including file's directory, as slurmd's plugstack.c does). A missing top file
    raises OSError; a missing or unreadable included one is skipped, as slurmd skips it."""
    found: list[tuple[Path, Path]] = []
    for line in plugstack.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] in ("required", "optional"):
            found.append((Path(words[1]), plugstack))
        elif len(words) >= 2 and words[0] == "include" and _depth < 8:
            pattern = words[1] if words[1].startswith("/") else str(plugstack.parent / words[1])
            for name in sorted(glob.glob(pattern)):
                try:
                    found += plugstack_entries(Path(name), _depth + 1)
                except OSError:
                    continue
    return found


def plugins_in(plugstack: Path) -> list[Path]:
    """spank_qpu.so entries of a plugstack.conf, includes followed."""
    return [so for so, _ in plugstack_entries(plugstack) if "spank_qpu" in so.name]


def check_qrmi(plugstack: Path) -> list[tuple[bool, str]]:
    """IBM's spank_qrmi next to spank_qpu: it exports the vendor key into jobs."""
    try:
        entries = plugstack_entries(plugstack)
    except OSError:
        return []
    return [(False, f"plugstack {where}: loads IBM's {so.name}, which puts the vendor's API key "
                    "into every job's environment (qproxy exists to keep it out of jobs): "
                    "remove that line; qproxy gives QRMI jobs the per-job token instead")
            for so, where in entries if "spank_qrmi" in so.name]


def check_config(path: str) -> tuple[list[tuple[bool, str]], cfg.Config | None]:
    try:
        conf = cfg.load(path)
    except cfg.ConfigError as exc:
        return [(False, line.strip()) for line in str(exc).splitlines() if line.strip()], None
    return [(True, f"config {path}: {len(conf.resources)} resources, "
                   f"{len(conf.upstreams)} upstreams")], conf


def check_files(conf: cfg.Config) -> list[tuple[bool, str]]:
    from qproxy.secrets import SecretsError, get_secret

    out: list[tuple[bool, str]] = []
    for up in conf.upstreams.values():
        for name in up.secret_names():
            try:
                get_secret(conf, name)
                out.append((True, f"secret {name!r} for upstream {up.name}: present"))
            except SecretsError as exc:
                out.append((False, f"upstream {up.name}: {exc}"))
    for name, d in (("state_dir", conf.state_dir), ("audit_dir", conf.audit_dir)):
        if d.exists() and d.stat().st_mode & 0o077:
            out.append((False, f"{name} {d} is readable by others: chmod 0700 {d}"))
        else:
            out.append((True, f"{name} {d}: {'private' if d.exists() else 'created on use'}"))
    return out


def check_lanes(conf: cfg.Config, timeout: float = 10.0) -> list[tuple[bool, str]]:
    """Each resource's Slurm lanes against the lanes its device gives HPC work, where the
    vendor reports them (an on-prem system's ``/lanes``): more Slurm lanes than that would
    leave jobs Queued in their proxies, holding Slurm allocations that cannot run."""
    import asyncio

    from qproxy.secrets import SecretsError
    from qproxy.upstream import open_upstream
    from qproxy.upstream.base import UpstreamError

    async def one(res: cfg.Resource) -> tuple[bool, str] | None:
        try:
            client = open_upstream(conf, res)
        except SecretsError:
            return None  # reported by check_files
        try:
            cap = await asyncio.wait_for(client.capacity(res.backend), timeout)
        except (UpstreamError, TimeoutError) as exc:
            return False, f"resource {res.name}: its device's lanes could not be read: {exc}"
        finally:
            await client.close()
        if cap.hpc_lanes is None:
            return None  # not reported (the cloud API)
        if res.lanes > cap.hpc_lanes:
            return False, (f"resource {res.name}: lanes = {res.lanes} but {res.backend} gives "
                           f"HPC work {cap.hpc_lanes}: jobs past that wait Queued in their "
                           f"proxies; set lanes (and the licence count) to {cap.hpc_lanes}")
        return True, f"resource {res.name}: {res.lanes} of the device's {cap.hpc_lanes} HPC lanes"

    async def every() -> list[tuple[bool, str] | None]:
        return list(await asyncio.gather(*(one(r) for r in conf.resources.values())))

    return [r for r in asyncio.run(every()) if r is not None]


def check_ports(conf: cfg.Config) -> list[tuple[bool, str]]:
    """Both proxy port ranges must be privileged here (qproxy.node.ports): a proxy refuses
    to start otherwise, so every QPU job of this node would fail."""
    from qproxy.node.ports import privileged

    out = []
    for name in ("ports", "relay_ports"):
        text = getattr(conf.proxy, name)
        high = (cfg.port_range(text) or (0, 0))[1]
        problem = privileged(high)
        out.append((problem is None, f"[proxy] {name} {text}: " + (
            problem or "privileged on this node (no user can bind them)")))
    return out


# Mount options under which a filesystem enforces quotas (ext4, XFS, tmpfs): users' files on
# it cannot then take all of it.
QUOTA_OPTIONS = frozenset({"quota", "usrquota", "grpquota", "prjquota", "usrjquota",
                           "grpjquota", "uquota", "gquota", "pquota", "uqnoenforce"})
Check = tuple[bool | None, str]  # None: a warning


def _unescape(field: str) -> str:
    """A mountinfo path: space, tab, newline and backslash are written as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_of(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")
             ) -> tuple[str, str, str, set[str]] | None:
    """(mount point, root within its filesystem, fstype, options) of the mount holding
    ``path`` (or its nearest existing parent): the longest mount point above it."""
    target = os.path.realpath(path)
    best: tuple[str, str, str, set[str]] | None = None
    for line in mountinfo.read_text().splitlines():
        left, sep, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if not sep or len(f) < 6 or len(r) < 3:
            continue
        point = _unescape(f[4])
        if target != point and not target.startswith(point.rstrip("/") + "/"):
            continue
        if best is None or len(point) >= len(best[0]):
            best = (point, _unescape(f[3]), r[0], set(f[5].split(",")) | set(r[2].split(",")))
    return best


def check_audit_space(conf: cfg.Config,
                      mountinfo: Path = Path("/proc/self/mountinfo")) -> list[Check]:
    """audit_dir on a filesystem of its own, or one with quotas; the node budget within it."""
    d = conf.audit_dir
    try:
        found = mount_of(d, mountinfo)
    except OSError as exc:
        return [(None, f"audit_dir {d}: cannot read {mountinfo} ({exc.strerror})")]
    if found is None:
        return [(None, f"audit_dir {d}: no mount holds it in {mountinfo}")]
    point, root, fstype, options = found
    quotas = sorted(options & QUOTA_OPTIONS)
    if point == os.path.realpath(d) and root == "/":
        out: list[Check] = [(True, f"audit_dir {d}: a filesystem of its own ({fstype})")]
    elif quotas:
        out = [(True, f"audit_dir {d}: on {point} ({fstype}) with quotas "
                      f"({','.join(quotas)}): check that no user's limit lets them fill it")]
    else:
        out = [(None, f"audit_dir {d}: shares the filesystem mounted at {point} ({fstype}) "
                      "with other writers and it has no quotas: whatever fills it makes every "
                      "job's proxy on this node answer 503; give audit_dir a filesystem of "
                      "its own (or enable quotas there)")]
    node_max = conf.proxy.audit_node_max_bytes
    probe = next((p for p in (d, *d.parents) if p.exists()), None)
    if node_max and probe is not None:
        st = os.statvfs(probe)
        size = st.f_blocks * st.f_frsize
        if node_max > size:
            out.append((None, f"[proxy].audit_node_max_bytes ({node_max}) is larger than "
                              f"audit_dir's filesystem ({size} bytes): the budget cannot keep "
                              "it from filling; lower it"))
    return out


def check_prolog_flags(slurm_conf: Path) -> list[Check]:
    """``PrologFlags=RunInJob`` (24.11+) runs ``Prolog=`` inside the job's cgroup but no SPANK
    job prolog at all (measured on 24.11 and 26.05): no QPU job would get its proxy."""
    try:
        text = slurm_conf.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        key, _, value = line.split("#", 1)[0].partition("=")
        if key.strip().lower() == "prologflags" and "runinjob" in value.lower().replace(
                " ", "").split(","):
            return [(False, f"{slurm_conf}: PrologFlags={value.strip()}: with RunInJob "
                            "Slurm runs no SPANK job prolog, so no QPU job gets its proxy; "
                            "remove RunInJob (qproxy keeps proxies out of job cgroups "
                            "itself: [proxy].cgroup)")]
    return []


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="qproxy doctor", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(cfg.DEFAULT_CONFIG_PATH))
    p.add_argument("--plugstack", type=Path, default=Path("/etc/slurm/plugstack.conf"),
                   help="where to find the spank_qpu.so slurmd loads")
    p.add_argument("--plugin", type=Path, action="append", default=[],
                   help="check this spank_qpu.so (instead of plugstack.conf's)")
    args = p.parse_args(argv)
    checked, conf = check_config(args.config)
    results: list[Check] = list(checked)
    if conf is not None:
        results += (check_files(conf) + check_ports(conf) + check_lanes(conf)
                    + check_audit_space(conf))
    plugins = list(args.plugin)
    if not plugins:
        try:
            plugins = plugins_in(args.plugstack)
        except OSError as exc:
            results.append((False, f"plugstack {args.plugstack}: {exc.strerror}"))
        if not plugins and args.plugstack.exists():
            results.append((False, f"plugstack {args.plugstack}: no spank_qpu.so line"))
    results += [check_plugin(so) for so in plugins]
    results += check_qrmi(args.plugstack)
    results += check_prolog_flags(args.plugstack.parent / "slurm.conf")
    for ok, line in results:
        print(f"{'WRN' if ok is None else 'ok ' if ok else 'BAD'} {line}")
    return 0 if all(ok is not False for ok, _ in results) else 1
