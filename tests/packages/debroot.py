"""What the packaging tests build and install into: `make deb`'s script with the Debian tools
it needs, and a throw-away Debian root with a release's Slurm -- an overlay whose lower layer
is a chroot scripts/slurmroot built (never written: every change lands in the upper layer,
deleted afterwards), with its own /dev, /proc and /run. Root only."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scripts.localcluster.slurmroot import chroot_root, mount_dev, mount_kernel_fs
from scripts.localcluster.system import apt_install

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "packaging" / "deb" / "build"
# packaging/deb/debian/control's Build-Depends plus lintian and the host's spank.h
# and the Prometheus and node_exporter test_prometheus.py runs (Debian's; promtool comes with
# prometheus), and rpmbuild for `make rpm` (test_rpm.py)
BUILD_TOOLS = ["dpkg-dev", "debhelper", "dh-python", "pybuild-plugin-pyproject", "python3-all",
               "python3-setuptools", "python3-wheel", "lintian", "libslurm-dev",
               "prometheus", "prometheus-node-exporter", "rpm"]
# .debs downloaded into a test root, kept between runs (Debian's archive is the only source)
APT_CACHE = Path("/var/cache/qproxy/deb-test-apt")


def ensure_build_tools() -> None:
    """apt-get install the build tools if one is missing (scripts/test does it before the
    lanes start: dpkg allows one apt-get at a time)."""
    probe = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}\n", *BUILD_TOOLS],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0 or probe.stdout.split("\n").count("ii ") < len(BUILD_TOOLS):
        apt_install(BUILD_TOOLS)


def build(out: Path, includes: list[Path], version: str | None = None,
          lintian: bool = False) -> dict[str, Path]:
    """`make deb` into OUT for each Slurm include directory; {package name: .deb}."""
    env = dict(os.environ, LINTIAN="1" if lintian else "0")
    if version:
        env["DEB_VERSION"] = version
    proc = subprocess.run([str(BUILD), str(out), *map(str, includes)], env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"packaging/deb/build failed:\n{proc.stdout}\n{proc.stderr}"
    return {deb.name.split("_")[0]: deb for deb in sorted(out.glob("*.deb"))}


class Root:
    """A Debian root to install into: run commands in it (chroot), read its files."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def run(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
               "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}
        proc = subprocess.run(["chroot", str(self.path), "/bin/sh", "-ec", script], env=env,
                              capture_output=True, text=True, check=False, timeout=600)
        if check:
            assert proc.returncode == 0, (f"in {self.path}: {script}\nexit {proc.returncode}\n"
                                          f"{proc.stdout}\n{proc.stderr}")
        return proc

    def __truediv__(self, inside: str) -> Path:
        return self.path / inside.lstrip("/")

    def files(self) -> set[str]:
        """Every path in the root (not below the mounted /dev, /proc, /sys, /run)."""
        out = subprocess.run(["find", str(self.path), "-xdev"], capture_output=True,
                             text=True, check=True).stdout
        n = len(str(self.path))
        return {line[n:] or "/" for line in out.splitlines()}


def chroot_of(suite: str) -> Path | None:
    """scripts/slurmroot's finished chroot of SUITE, or None."""
    path = chroot_root() / suite
    return path if (path / "usr/sbin/slurmd").exists() else None


@contextmanager
def overlay_root(lower: Path, base: Path) -> Iterator[Root]:
    """LOWER (read-only) + an upper layer in BASE, mounted at BASE/root; unmounted after."""
    upper, work, merged = base / "upper", base / "work", base / "root"
    for d in (upper, work, merged):
        d.mkdir(parents=True)
    subprocess.run(["mount", "-t", "overlay", "qproxy-deb-test", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)], check=True)
    try:
        mount_dev(merged)
        mount_kernel_fs(merged)
        cache = APT_CACHE / lower.name
        (cache / "partial").mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(cache),
                        str(merged / "var/cache/apt/archives")], check=True)
        yield Root(merged)
    finally:
        for attempt in range(5):
            if subprocess.run(["umount", "-R", str(merged)], check=False).returncode == 0:
                break
            time.sleep(0.5 * (attempt + 1))
        else:
            subprocess.run(["umount", "-R", "-l", str(merged)], check=False)
