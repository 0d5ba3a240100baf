"""`make rpm` (packaging/rpm/build, Debian's rpmbuild) against the trixie chroot's Slurm 24.11
headers and the host's 22.05, and the packages' metadata as rpm reads it: pyxis' release
convention, the requirement pinning the Slurm release, the files. They cannot be installed
here (no RHEL-family root, no EPEL): the README says so."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.packages.debroot import REPO, chroot_of, ensure_build_tools

pytestmark = pytest.mark.slow


def rpm_q(what: str, pkg: Path) -> list[str]:
    out = subprocess.run(["rpm", "-qp", what, str(pkg)], capture_output=True, text=True,
                         check=True).stdout
    return out.splitlines()


def test_rpm_build_and_metadata(tmp_path: Path) -> None:
    ensure_build_tools()
    trixie = chroot_of("trixie")
    if trixie is None:
        pytest.fail("no trixie chroot: run scripts/slurmroot build trixie first")
    proc = subprocess.run([str(REPO / "packaging/rpm/build"), str(tmp_path),
                           str(trixie / "usr/include"), "/usr/include"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rpms = {p.name: p for p in tmp_path.glob("*.rpm")}
    assert set(rpms) == {"qproxy-0.1.0-1.noarch.rpm",
                         "qproxy-spank-0.1.0-1.sl2411.x86_64.rpm",
                         "qproxy-spank-0.1.0-1.sl2205.x86_64.rpm"}, rpms

    plugin = rpms["qproxy-spank-0.1.0-1.sl2411.x86_64.rpm"]
    requires = rpm_q("--requires", plugin)
    for pin in ("slurm >= 24.11", "slurm < 24.12", "slurm-slurmd >= 24.11",
                "slurm-slurmd < 24.12", "qproxy = 0.1.0"):
        assert pin in requires, requires
    assert "qproxy-spank-slurm = 24.11" in rpm_q("--provides", plugin)
    assert set(rpm_q("-l", plugin)) >= {"/usr/lib/qproxy/spank_qpu.so",
                                        "/etc/slurm/plugstack.conf.d/qproxy.conf"}
    assert "/etc/slurm/plugstack.conf.d/qproxy.conf" in rpm_q("-c", plugin)  # a config file
    assert "slurm < 22.06" in rpm_q("--requires", rpms["qproxy-spank-0.1.0-1.sl2205.x86_64.rpm"])
    # each package holds its own build: the two plugins' digests differ
    digests = {name: [line.split()[3] for line in rpm_q("--dump", pkg)
                      if line.startswith("/usr/lib/qproxy/spank_qpu.so ")]
               for name, pkg in rpms.items() if name.startswith("qproxy-spank")}
    assert all(len(d) == 1 for d in digests.values()), digests
    assert len({d[0] for d in digests.values()}) == 2, digests

    node = rpms["qproxy-0.1.0-1.noarch.rpm"]
    requires = rpm_q("--requires", node)
    for dep in ("python3.11", "python3.11dist(aiohttp) >= 3.9",
                "python3.11dist(prometheus-client) >= 0.17", "systemd"):
        assert dep in requires, requires
    files = set(rpm_q("-l", node))
    assert {"/usr/bin/qproxy", "/etc/qproxy/qproxy.toml",
            "/usr/lib/qproxy/qproxy/admin/metrics.py",
            "/usr/lib/systemd/system/qproxy-reap.timer",
            "/usr/lib/systemd/system/qproxy-metrics.service",
            "/usr/share/qproxy/prometheus/qproxy-alerts.yml",
            "/usr/share/qproxy/grafana/qproxy.json"} <= files, files
    assert not any("/emulator/" in f for f in files)  # job-side (Qiskit): not on the nodes
    assert rpm_q("-c", node) == ["/etc/qproxy/qproxy.toml"]
    scripts = subprocess.run(["rpm", "-qp", "--scripts", str(node)], capture_output=True,
                             text=True, check=True).stdout
    assert "newkey /etc/qproxy/secrets.key 32 fernet" in scripts, scripts
