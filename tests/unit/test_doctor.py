"""``qproxy doctor``: a plugin built for another Slurm major.minor is reported (slurmd would
refuse it and fail every job), a matching one passes, and config problems are listed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parents[2] / "conf" / "qproxy.toml"


def _fake_slurmd(tmp_path: Path, version: str) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    slurmd = bindir / "slurmd"
    slurmd.write_text(f"#!/bin/sh\necho 'slurm {version}'\n")
    slurmd.chmod(0o755)
    return {"PATH": f"{bindir}:/usr/bin:/bin"}


def _doctor(tmp_path: Path, built_for: str, installed: str) -> subprocess.CompletedProcess[str]:
    so = tmp_path / "spank_qpu.so"
    # what version.c puts into the .so, between other bytes as in a real ELF file
    so.write_bytes(b"\x7fELF\0\0junk\0qpu_built_for_slurm=" + built_for.encode() + b"\0more\0")
    plugstack = tmp_path / "plugstack.conf"
    plugstack.write_text(f"required {so} config={CONF}\n")
    return subprocess.run(
        [sys.executable, "-m", "qproxy", "doctor", "--config", str(CONF),
         "--plugstack", str(plugstack)],
        capture_output=True, text=True, env=_fake_slurmd(tmp_path, installed), check=False)


def test_plugin_for_another_slurm_is_reported(tmp_path: Path) -> None:
    out = _doctor(tmp_path, "22.05.8", "24.11.5")
    assert out.returncode == 1
    line = next(ln for ln in out.stdout.splitlines() if "plugin" in ln)
    assert line.startswith("BAD") and "built for Slurm 22.05.8, this node runs 24.11.5" in line


@pytest.mark.parametrize(("built", "installed"), [("24.11.5", "24.11.2"), ("26.05.5", "26.05.5")])
def test_plugin_for_this_slurm_passes(tmp_path: Path, built: str, installed: str) -> None:
    out = _doctor(tmp_path, built, installed)
    line = next(ln for ln in out.stdout.splitlines() if "plugin" in ln)
    assert line.startswith("ok ") and f"built for Slurm {built}" in line, out.stdout


def test_config_problems_each_on_a_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[proxy]\nlanes_mode = "queue"\n[resources.x]\nupstream = "nowhere"\n'
                   'backend = "b"\nlanes = "2"\n')
    out = subprocess.run([sys.executable, "-m", "qproxy", "doctor", "--config", str(bad),
                          "--plugstack", str(tmp_path / "none.conf")],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 1
    bad_lines = [ln for ln in out.stdout.splitlines() if ln.startswith("BAD")]
    assert any("lanes_mode" in ln for ln in bad_lines), out.stdout
    assert any("[resources.x].lanes must be an integer" in ln for ln in bad_lines), out.stdout
    assert "Traceback" not in out.stdout + out.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")
def test_lowered_unprivileged_port_start_is_reported(tmp_path: Path) -> None:
    """In a network namespace whose admin let users bind low ports, doctor says the proxy
    ports are not safe, and a proxy would refuse them (the same check, qproxy.node.ports)."""
    script = ("sysctl -q -w net.ipv4.ip_unprivileged_port_start=200 && "
              f"{sys.executable} -m qproxy doctor --config {CONF} "
              f"--plugstack {tmp_path / 'none.conf'}")
    out = subprocess.run(["unshare", "--net", "sh", "-c", script],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    bad = [ln for ln in out.stdout.splitlines() if ln.startswith("BAD [proxy]")]
    assert len(bad) == 2 and "ip_unprivileged_port_start is 200" in bad[0], out.stdout
    ok = subprocess.run([sys.executable, "-m", "qproxy", "doctor", "--config", str(CONF),
                         "--plugstack", str(tmp_path / "none.conf")],
                        capture_output=True, text=True, check=False).stdout
    assert "ok  [proxy] ports 100-599: privileged" in ok, ok


def test_prolog_flags_run_in_job_is_reported(tmp_path: Path) -> None:
    """RunInJob: Slurm then runs no SPANK job prolog (24.11, 26.05), so no proxy would start."""
    from qproxy.admin.doctor import check_prolog_flags

    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\nPrologFlags=Alloc,Contain\n")
    assert check_prolog_flags(conf) == []
    conf.write_text("ClusterName=x\nPrologFlags=Alloc, RunInJob  # measured\n")
    [(ok, line)] = check_prolog_flags(conf)
    assert ok is False and "RunInJob" in line and "no SPANK job prolog" in line
    assert check_prolog_flags(tmp_path / "missing.conf") == []
