"""Chroots with other Debian releases' Slurm, each run inside its own network namespace, so
the same single-node cluster and tests run on 22.05 (host), 24.11 (trixie) and 26.05 (sid).

  scripts/slurmroot build SUITE                 debootstrap + Slurm + the host Python's libs
  scripts/slurmroot mount SUITE [--bind P...] [--ro-bind P...] [--user U...]
  scripts/slurmroot netns SUITE                 the qproxy-SUITE network namespace
  scripts/slurmroot exec SUITE [--user U] -- CMD...
  scripts/slurmroot umount SUITE [--keep-netns] everything below the chroot + the netns
  scripts/slurmroot destroy SUITE               delete the chroot (refused while mounted)
  scripts/slurmroot path SUITE | version SUITE  where it is / its `slurmd -V`

Chroots live outside the clone (QPROXY_CHROOT_ROOT, default /var/lib/qproxy/chroots) and
are reused while their stamp records the same recipe. Root only; stdlib only.
scripts/slurmroot is the command; localcluster.single and .multinode call it.
"""

from __future__ import annotations

import argparse
import functools
import grp
import hashlib
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from scripts.localcluster.settings import CHROOT_SUITES as SUITES
from scripts.localcluster.settings import netns_name
from scripts.localcluster.system import apt_install


@functools.cache
def host_suite() -> str:
    """The host's own release (bookworm here): a netns-only "suite" with the host's root."""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return "host"


def netns_suites() -> tuple[str, ...]:
    return (*SUITES, host_suite())


def chroot_root() -> Path:
    """Where the chroots live (QPROXY_CHROOT_ROOT)."""
    return Path(os.environ.get("QPROXY_CHROOT_ROOT", "/var/lib/qproxy/chroots"))


MIRROR = "http://deb.debian.org/debian"
SLURM_PACKAGES = ["slurmctld", "slurmd", "slurm-client", "slurmdbd", "munge", "libslurm-dev",
                  "gcc", "make", "libc6-dev"]
# What the host's (pyenv-built) interpreter, its lib-dynload modules and the manylinux wheels
# (numpy, qiskit, qiskit-aer: libstdc++/libgomp) link against when bind-mounted in. Checked
# after every build with ldd (`check_libs`); trixie and sid carry the same (t64) names.
RUNTIME_PACKAGES = ["ca-certificates", "libssl3t64", "libffi8", "zlib1g", "libbz2-1.0",
                    "liblzma5", "libsqlite3-0", "libstdc++6", "libgcc-s1", "libgomp1",
                    "libncursesw6", "libtinfo6", "libreadline8t64", "libuuid1", "libnsl2",
                    "libtirpc3t64", "libgdbm6t64", "libgdbm-compat4t64", "libexpat1",
                    "libcrypt1", "procps", "iproute2"]
APT_OPTS = ["-o", "Acquire::Check-Valid-Until=false", "-o", "APT::Install-Recommends=false",
            "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"]
STAMP = ".qproxy-recipe"
DEV_NODES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
             "urandom": (1, 9), "tty": (5, 0)}


class Failure(Exception):
    """A step failed; main() prints it as one loud line and exits 1."""


def log(msg: str) -> None:
    print(f"slurmroot: {msg}", file=sys.stderr, flush=True)


def chroot_dir(suite: str) -> Path:
    """Per-suite chroot directory, outside the git clone so `git clean` never recurses in.
    The host's own suite is "/" (netns only): mount/umount/destroy never touch it."""
    return Path("/") if suite == host_suite() else chroot_root() / suite


def recipe(suite: str) -> str:
    """Hash of everything that decides a chroot's content: a changed list means a rebuild."""
    text = json.dumps({"suite": suite, "mirror": MIRROR, "variant": "minbase",
                       "packages": sorted(SLURM_PACKAGES + RUNTIME_PACKAGES)})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_logged(cmd: list[str], logfile: Path, what: str) -> None:
    """Run a long build step with its output in a log; on failure raise with the last error
    line so the caller can say in one line what broke."""
    with logfile.open("a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive",
                                     LC_ALL="C"), check=False).returncode
    if rc != 0:
        lines = [ln.strip() for ln in logfile.read_text().splitlines() if ln.strip()]
        errs = [ln for ln in lines if ln.startswith(("E:", "W: Failure", "E "))
                or "rror" in ln or "Unable" in ln]
        raise Failure(f"{what} exited {rc}: {(errs or lines or ['?'])[-1]} (log: {logfile})")


# ---------------------------------------------------------------------------- build
def ensure_debootstrap() -> None:
    """debootstrap and ip (iproute2) are the host tools the build and the namespaces need
    beyond util-linux; a fresh machine's package lists may be stale: update once, retry."""
    missing = [pkg for tool, pkg in (("debootstrap", "debootstrap"), ("ip", "iproute2"))
               if not shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")]
    if missing:
        log("installing " + " ".join(missing))
        apt_install(missing)


def in_chroot(suite: str, *cmd: str) -> list[str]:
    """A build-time command inside the chroot (no netns: apt must reach the mirror)."""
    return ["chroot", str(chroot_dir(suite)), *cmd]


def write_chroot_apt_config(root: Path) -> None:
    """policy-rc.d exits 101 so installing slurmd/munge never starts a daemon; apt accepts
    a Release past its Valid-Until (sid's often is) and installs no recommends."""
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    (root / "etc/apt/apt.conf.d/99qproxy").write_text(
        'Acquire::Check-Valid-Until "false";\nAPT::Install-Recommends "false";\n')


def build(suite: str) -> int:
    """Create (or reuse) the chroot for SUITE and print its Slurm version and build time."""
    t0 = time.monotonic()
    root = chroot_dir(suite)
    stamp = root / STAMP
    want = recipe(suite)
    if stamp.exists() and stamp.read_text().strip() == want:
        log(f"{suite}: reusing {root} (recipe {want})")
        print(slurm_version(suite))
        return 0
    ensure_debootstrap()
    chroot_root().mkdir(parents=True, exist_ok=True)
    logfile = chroot_root() / f"{suite}.build.log"
    logfile.write_text(f"build {suite} recipe {want} at {time.ctime()}\n")
    if not (root / ".qproxy-debootstrap").exists():
        if root.exists():
            destroy(suite)
        log(f"{suite}: debootstrap --variant=minbase into {root} (log {logfile})")
        run_logged(["debootstrap", "--variant=minbase", suite, str(root), MIRROR],
                   logfile, "debootstrap")
        (root / ".qproxy-debootstrap").write_text(f"{time.ctime()}\n")
    log(f"{suite}: debootstrap done after {time.monotonic() - t0:.0f}s")
    write_chroot_apt_config(root)
    mount(suite, binds=[], ro_binds=[], users=[])
    try:
        run_logged(in_chroot(suite, "apt-get", *APT_OPTS, "update"), logfile, "apt-get update")
        run_logged(in_chroot(suite, "apt-get", *APT_OPTS, "install", "-y",
                             *SLURM_PACKAGES, *RUNTIME_PACKAGES), logfile, "apt-get install")
        run_logged(in_chroot(suite, "apt-get", "clean"), logfile, "apt-get clean")
    finally:
        umount(suite, keep_netns=True)
    stamp.write_text(want + "\n")
    version = slurm_version(suite)
    log(f"{suite}: built in {time.monotonic() - t0:.0f}s: {version}")
    print(version)
    return 0


def slurm_version(suite: str) -> str:
    """`slurmd -V` works without a slurm.conf (client commands do not)."""
    out = subprocess.run(in_chroot(suite, "slurmd", "-V"), capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise Failure(f"slurmd -V in the {suite} chroot failed: {out.stderr.strip()}")
    return out.stdout.strip()


def check_libs(suite: str, paths: list[str]) -> int:
    """ldd every ELF object under PATHs from inside the (mounted) chroot: print what would
    not load, so a missing runtime package shows before a job fails on it."""
    missing: dict[str, set[str]] = {}
    for base in paths:
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if not (".so" in name or dirpath.endswith("/bin")):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    with open(path, "rb") as f:
                        if f.read(4) != b"\x7fELF":
                            continue
                except OSError:
                    continue
                out = subprocess.run(in_chroot(suite, "ldd", path), capture_output=True,
                                     text=True, check=False).stdout
                for line in out.splitlines():
                    if "not found" in line:
                        missing.setdefault(line.split()[0], set()).add(path)
    for lib, users in sorted(missing.items()):
        print(f"{lib}: needed by {len(users)} e.g. {sorted(users)[0]}")
    return 1 if missing else 0


# ---------------------------------------------------------------------------- mounts
def mounts_below(root: Path) -> list[str]:
    """Mount points at or below ROOT from /proc/mounts (octal escapes decoded)."""
    prefix = str(root)
    found = []
    for line in Path("/proc/mounts").read_text().splitlines():
        target = line.split()[1].encode().decode("unicode_escape")
        if target == prefix or target.startswith(prefix + "/"):
            found.append(target)
    return found


def is_mounted(path: Path) -> bool:
    """Exact mount point check (idempotent mounts)."""
    return str(path) in mounts_below(path)


def mkdirs_like_host(root: Path, host_path: Path) -> Path:
    """Create HOST_PATH's parents inside ROOT with the host's modes, so an unprivileged job
    user can traverse into e.g. /root/.pyenv there exactly as it can on the host."""
    inside = root / host_path.relative_to("/")
    for parent in [*reversed(host_path.parents), host_path][1:]:
        target = root / parent.relative_to("/")
        if not target.exists():
            target.mkdir()
        if parent.is_dir():
            st = parent.stat()
            os.chmod(target, stat.S_IMODE(st.st_mode))
    return inside


def mount_dev(root: Path) -> None:
    """A private /dev: tmpfs + the few nodes daemons and Python use + its own devpts. Never a
    bind of the host's /dev (a recursive delete of the chroot would delete the host's)."""
    dev = root / "dev"
    dev.mkdir(exist_ok=True)
    if not is_mounted(dev):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755,nosuid,size=16m",
                        "qproxy-dev", str(dev)], check=True)
    for name, (major, minor) in DEV_NODES.items():
        node = dev / name
        if not node.exists():
            os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(node, 0o666)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                         ("ptmx", "pts/ptmx")):
        if not (dev / name).is_symlink():
            (dev / name).symlink_to(target)
    (dev / "pts").mkdir(exist_ok=True)
    if not is_mounted(dev / "pts"):
        subprocess.run(["mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=620",
                        "qproxy-devpts", str(dev / "pts")], check=True)
    (dev / "shm").mkdir(exist_ok=True)
    if not is_mounted(dev / "shm"):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev",
                        "qproxy-shm", str(dev / "shm")], check=True)


def mount_kernel_fs(root: Path) -> None:
    """/proc (Slurm's linuxproc tracking reads it), a read-only /sys, and a tmpfs /run."""
    for sub, cmd in (("proc", ["-t", "proc", "-o", "nosuid,nodev,noexec", "qproxy-proc"]),
                     ("sys", ["-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "qproxy-sys"]),
                     ("run", ["-t", "tmpfs", "-o", "mode=755,nosuid,nodev", "qproxy-run"])):
        target = root / sub
        target.mkdir(exist_ok=True)
        if not is_mounted(target):
            subprocess.run(["mount", *cmd, str(target)], check=True)
    (root / "tmp").chmod(0o1777)


def bind(root: Path, host_path: Path, readonly: bool) -> None:
    """Bind a host path at the same path inside (non-recursive: nothing else rides along)."""
    if not host_path.exists():
        raise Failure(f"cannot bind {host_path}: it does not exist")
    inside = mkdirs_like_host(root, host_path.parent) / host_path.name
    if host_path.is_dir():
        inside.mkdir(exist_ok=True)
    elif not inside.exists():
        inside.touch()
    if is_mounted(inside):
        return
    subprocess.run(["mount", "--bind", str(host_path), str(inside)], check=True)
    if readonly:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(inside)], check=True)


def sync_users(root: Path, users: list[str]) -> None:
    """Same names, uids and gids inside as outside (root and the job users), so files in the
    bind-mounted state dir keep their owners and Slurm resolves the job user."""
    names = ["root", *users]
    entries = {}
    groups = {}
    for name in names:
        pw = pwd.getpwnam(name)
        entries[name] = ":".join([pw.pw_name, "x", str(pw.pw_uid), str(pw.pw_gid),
                                  pw.pw_gecos, pw.pw_dir, pw.pw_shell])
        gr = grp.getgrgid(pw.pw_gid)
        groups[gr.gr_name] = ":".join([gr.gr_name, "x", str(gr.gr_gid), ",".join(gr.gr_mem)])
    for fname, want in (("passwd", entries), ("group", groups)):
        path = root / "etc" / fname
        lines = path.read_text().splitlines()
        ids = {e.split(":")[2] for e in want.values()}
        kept = [ln for ln in lines if ln.split(":")[0] not in want
                and not (ln.split(":")[2:3] and ln.split(":")[2] in ids)]
        path.write_text("\n".join([*want.values(), *kept]) + "\n")
    for name in users:
        home = Path(pwd.getpwnam(name).pw_dir)
        if home.is_dir():
            bind(root, home, readonly=False)


def write_hosts(root: Path) -> None:
    """The hostname resolves to 127.0.0.1 inside (slurm.conf names the node by it)."""
    host = socket.gethostname().split(".")[0]
    (root / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.0.1\t{host}\n"
                                    "::1\tlocalhost ip6-localhost ip6-loopback\n")
    (root / "etc/hostname").write_text(host + "\n")


def mount(suite: str, binds: list[str], ro_binds: list[str], users: list[str]) -> int:
    """Private /dev, kernel filesystems and host binds (shallowest first). Idempotent."""
    root = chroot_dir(suite)
    if suite == host_suite():
        return 0  # the host's own root: nothing to mount
    if not (root / "usr/bin").is_dir():
        raise Failure(f"no chroot at {root}: run `scripts/slurmroot build {suite}` first")
    mount_dev(root)
    mount_kernel_fs(root)
    wanted = [(Path(p).resolve(), False) for p in binds] + [
        (Path(p).resolve(), True) for p in ro_binds]
    for path, readonly in sorted(set(wanted), key=lambda pr: len(pr[0].parts)):
        bind(root, path, readonly)
    write_hosts(root)
    sync_users(root, users)
    return 0


def umount(suite: str, keep_netns: bool = False) -> int:
    """Unmount everything below the chroot, deepest first (lazily if busy), then drop the
    network namespace."""
    root = chroot_dir(suite)
    if suite == host_suite():
        if not keep_netns:
            netns_delete(suite)
        return 0  # never unmount below the host's "/"
    for target in sorted(mounts_below(root), key=lambda t: t.count("/"), reverse=True):
        if target == str(root):
            continue
        if subprocess.run(["umount", target], capture_output=True, check=False).returncode:
            log(f"{target} busy: lazy unmount")
            subprocess.run(["umount", "-l", target], check=False)
    left = [t for t in mounts_below(root) if t != str(root)]
    if left:
        raise Failure(f"still mounted below {root}: {' '.join(left)}")
    if not keep_netns:
        netns_delete(suite)
    return 0


def destroy(suite: str) -> int:
    """Delete the chroot, but only when /proc/mounts shows nothing mounted below it (a bound
    host directory would be deleted with it)."""
    root = chroot_dir(suite)
    if suite == host_suite():
        raise Failure("refusing to delete the host's root")
    left = mounts_below(root)
    if left:
        raise Failure(f"refusing to delete {root}: mounted below it: {' '.join(left)}")
    if root.exists():
        log(f"deleting {root}")
        shutil.rmtree(root)
    return 0


# ---------------------------------------------------------------------------- netns
def netns_exists(name: str) -> bool:
    """`ip netns list` prints `NAME` or `NAME (id: N)`."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return name in (line.split()[0] for line in out.stdout.splitlines() if line.strip())


def netns(suite: str) -> int:
    """qproxy-SUITE with lo up plus 127.0.0.2/32: 23.02+ daemons resolve their listen
    address with AI_ADDRCONFIG, which fails while 127.0.0.1 is lo's only address."""
    name = netns_name(suite)
    if not netns_exists(name):
        subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    have = subprocess.run(["ip", "-n", name, "-o", "addr", "show", "dev", "lo"],
                          capture_output=True, text=True, check=True).stdout
    if "127.0.0.2/32" not in have:
        subprocess.run(["ip", "-n", name, "addr", "add", "127.0.0.2/32", "dev", "lo"],
                       check=True)
    return 0


def netns_delete(suite: str) -> None:
    """Remove the namespace name (processes still inside keep it alive until they exit)."""
    name = netns_name(suite)
    if netns_exists(name):
        subprocess.run(["ip", "netns", "delete", name], check=True)


# ---------------------------------------------------------------------------- exec
def userspec(user: str) -> list[str]:
    """chroot(8)'s options that run as USER with its primary and supplementary groups."""
    pw = pwd.getpwnam(user)
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
    return [f"--userspec={pw.pw_uid}:{pw.pw_gid}",
            f"--groups={','.join(str(g) for g in [pw.pw_gid, *groups])}"]


def sbin(name: str) -> str:
    """Absolute path of a host tool: the caller's PATH (a job user's) may lack /usr/sbin."""
    return shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin") or name


def exec_in(suite: str, user: str | None, cmd: list[str]) -> int:
    """Replace this process with CMD in the netns and chroot (same PID: callers record it),
    in the current directory when that exists inside."""
    root = chroot_dir(suite)
    if not cmd:
        raise Failure("exec: no command")
    if not netns_exists(netns_name(suite)):
        raise Failure(f"no network namespace {netns_name(suite)}: run `netns {suite}`")
    env = dict(os.environ)
    spec = []
    if user:
        pw = pwd.getpwnam(user)
        spec = userspec(user)
        env.update(HOME=pw.pw_dir, USER=user, LOGNAME=user)
    cwd = os.getcwd()
    inner = ["sh", "-c", 'cd "$0" 2>/dev/null || cd /; exec "$@"', cwd, *cmd]
    argv = [sbin("ip"), "netns", "exec", netns_name(suite), sbin("chroot"), *spec,
            str(root), *inner]
    os.execve(argv[0], argv, env)
    return 127  # not reached


# ---------------------------------------------------------------------------- main
def parse(argv: list[str]) -> argparse.Namespace:
    """CLI; `exec` takes everything after `--` verbatim."""
    p = argparse.ArgumentParser(prog="slurmroot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("build", "destroy", "path", "version"):
        sub.add_parser(name).add_argument("suite", choices=SUITES)
    sub.add_parser("netns").add_argument("suite", choices=netns_suites())
    u = sub.add_parser("umount")
    u.add_argument("suite", choices=netns_suites())
    u.add_argument("--keep-netns", action="store_true",
                   help="leave qproxy-SUITE alone (a several-node cluster has its own)")
    m = sub.add_parser("mount")
    m.add_argument("suite", choices=netns_suites())
    m.add_argument("--bind", nargs="+", default=[], action="extend", metavar="PATH")
    m.add_argument("--ro-bind", nargs="+", default=[], action="extend", metavar="PATH")
    m.add_argument("--user", nargs="+", default=[], action="extend", metavar="NAME")
    c = sub.add_parser("check-libs")
    c.add_argument("suite", choices=SUITES)
    c.add_argument("paths", nargs="+")
    e = sub.add_parser("exec")
    e.add_argument("suite", choices=netns_suites())
    e.add_argument("--user")
    if argv[:1] == ["exec"] and "--" in argv:  # options before `--`, the command after it
        cut = argv.index("--")
        args = p.parse_args(argv[:cut])
        args.command = argv[cut + 1:]
        return args
    args = p.parse_args(argv)
    if args.cmd == "exec":
        p.error("exec: usage: exec SUITE [--user U] -- CMD...")
    return args


def main(argv: list[str]) -> int:
    """Dispatch; every failure is one loud line naming the suite."""
    args = parse(argv)
    if os.geteuid() != 0:
        sys.exit("slurmroot: run as root (debootstrap, mount, ip netns)")
    try:
        if args.cmd == "build":
            return build(args.suite)
        if args.cmd == "mount":
            return mount(args.suite, args.bind, args.ro_bind, args.user)
        if args.cmd == "umount":
            return umount(args.suite, keep_netns=args.keep_netns)
        if args.cmd == "destroy":
            return destroy(args.suite)
        if args.cmd == "netns":
            return netns(args.suite)
        if args.cmd == "path":
            print(chroot_dir(args.suite))
            return 0
        if args.cmd == "version":
            print(slurm_version(args.suite))
            return 0
        if args.cmd == "check-libs":
            return check_libs(args.suite, args.paths)
        return exec_in(args.suite, args.user, args.command)
    except (Failure, subprocess.CalledProcessError, OSError) as exc:
        what = "BUILD FAILED" if args.cmd == "build" else f"{args.cmd} failed"
        print(f"slurmroot: *** {what} for {args.suite}: {exc} ***", file=sys.stderr)
        return 1
