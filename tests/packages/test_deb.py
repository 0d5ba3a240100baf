"""`make deb`'s packages, built here and installed into a throw-away Debian trixie root
(Slurm 24.11 from Debian's packages) with apt: install, upgrade, a plugin package for the
wrong Slurm release, remove, purge. Real dpkg, apt, maintainer scripts and Debian's
python3-* libraries (the root's Python 3.13), from Debian's archive only.

Needs root and scripts/slurmroot's trixie chroot (scripts/test builds it first); the chroot
is the lower layer of an overlay and never written."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packages.debroot import Root, build, chroot_of, ensure_build_tools, overlay_root

pytestmark = pytest.mark.slow

SUITE = "trixie"  # Slurm 24.11
VERSION = "0.1.0"
UPGRADE = "0.1.0+rebuild1"
KEYS = ("/etc/qproxy/audit.key", "/etc/qproxy/secrets.key", "/etc/qproxy/cluster.key")
DROPIN = "/etc/slurm/plugstack.conf.d/qproxy.conf"


@pytest.fixture(scope="module")
def lower() -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root (dpkg-buildpackage is fine, but chroot and mount are not)")
    path = chroot_of(SUITE)
    if path is None:
        pytest.fail(f"no {SUITE} chroot: run scripts/slurmroot build {SUITE} first")
    ensure_build_tools()
    return path


@pytest.fixture(scope="module")
def debs(lower: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """{version: {package: .deb}}: this tree as VERSION for trixie's 24.11 and the host's
    22.05 (the wrong release there), and again as UPGRADE."""
    base = tmp_path_factory.mktemp("debs")
    includes = [lower / "usr/include", Path("/usr/include")]
    return {VERSION: build(base / "v1", includes, lintian=True),
            UPGRADE: build(base / "v2", includes[:1], version=UPGRADE)}


@pytest.fixture
def root(lower: Path, tmp_path: Path) -> Iterator[Root]:
    with overlay_root(lower, tmp_path) as r:
        yield r


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mode(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_mode & 0o7777, st.st_uid, st.st_gid


def test_build_is_reproducible_and_pins_the_slurm_release(
        debs: dict[str, dict[str, Path]], lower: Path, tmp_path: Path) -> None:
    v1 = debs[VERSION]
    assert set(v1) >= {"qproxy", "qproxy-spank-slurm-24.11", "qproxy-spank-slurm-22.05"}
    # one commit built twice in the same place: the same bytes (lintian passed in `debs`)
    names = ("qproxy", "qproxy-spank-slurm-24.11")
    first = {name: sha(v1[name]) for name in names}
    again = build(v1["qproxy"].parent, [lower / "usr/include"])
    assert {name: sha(again[name]) for name in names} == first
    fields = dpkg_fields(v1["qproxy-spank-slurm-24.11"])
    assert "slurm-wlm-basic-plugins (>= 24.11~)" in fields["Depends"]
    assert "slurm-wlm-basic-plugins (>= 24.12~)" in fields["Breaks"]
    assert f"qproxy (= {VERSION})" in fields["Depends"]
    assert "python3-aiohttp" in dpkg_fields(v1["qproxy"])["Depends"]
    listing = subprocess.run(["dpkg-deb", "-c", str(v1["qproxy"])], capture_output=True,
                             text=True, check=True).stdout
    for shipped in ("./usr/share/qproxy/prometheus/qproxy-alerts.yml",
                    "./usr/share/qproxy/grafana/qproxy.json"):
        assert shipped in listing, listing


def dpkg_fields(deb: Path) -> dict[str, str]:
    text = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True,
                          check=True).stdout
    fields: dict[str, str] = {}
    for m in re.finditer(r"^([A-Za-z-]+): (.*(?:\n .*)*)", text, re.M):
        fields[m.group(1)] = m.group(2)
    return fields


def test_install_upgrade_wrong_release_remove_purge(
        debs: dict[str, dict[str, Path]], root: Root) -> None:
    v1 = debs[VERSION]
    plugin = "qproxy-spank-slurm-24.11"
    (root / "tmp/debs").mkdir()
    for version, pkgs in debs.items():
        for name, deb in pkgs.items():
            if not name.endswith("-dbgsym"):
                shutil.copy(deb, root / f"tmp/debs/{version}-{deb.name}")
    root.run("apt-get update -qq")
    before = root.files()

    def install(*names: str, version: str = VERSION, check: bool = True,
                extra: str = "") -> str:
        debs_ = " ".join(f"/tmp/debs/{version}-{debs[version][n].name}" for n in names)
        proc = root.run(f"apt-get install -y -q {extra} {debs_} 2>&1", check=check)
        return proc.stdout

    # ---- a plugin package for the wrong Slurm release (22.05 here): dpkg and apt refuse it
    wrong = f"/tmp/debs/{VERSION}-{v1['qproxy-spank-slurm-22.05'].name}"
    proc = root.run(f"dpkg -i {wrong} 2>&1", check=False)
    assert proc.returncode != 0, proc.stdout
    assert "breaks slurm-wlm-basic-plugins (>= 22.06~)" in proc.stdout, proc.stdout
    root.run("dpkg --remove qproxy-spank-slurm-22.05 2>&1 || true")
    # apt would only remove Slurm for it (--no-remove: refuse instead of asking)
    proc = root.run(f"apt-get install -y --no-remove /tmp/debs/{VERSION}-"
                    f"{v1['qproxy'].name} {wrong} 2>&1", check=False)
    assert proc.returncode != 0, proc.stdout
    assert "slurm-wlm-basic-plugins" in proc.stdout, proc.stdout
    assert "qproxy" not in root.run("dpkg -l").stdout

    # ---- install: Debian's python3-* from the archive, keys, modes, drop-in, units
    out = install("qproxy", plugin)
    assert "restart slurmd" in out and "systemctl restart slurmd" in out
    for key in KEYS:
        assert mode(root / key) == (0o600, 0, 0), key
    assert mode(root / "var/log/qproxy") == (0o700, 0, 0)
    assert mode(root / "run/qproxy") == (0o700, 0, 0)
    assert mode(root / "etc/qproxy/qproxy.toml") == (0o644, 0, 0)
    assert "/usr/lib/qproxy/spank_qpu.so" in (root / DROPIN).read_text()
    wants = root / "etc/systemd/system"
    assert (wants / "slurmd.service.wants/qproxy-reap.service").is_symlink()
    assert (wants / "timers.target.wants/qproxy-reap.timer").is_symlink()
    assert (wants / "multi-user.target.wants/qproxy-metrics.service").is_symlink()
    assert not list(wants.glob("*/qproxy-monitor.service"))  # the controller's admin enables it
    # the installed qproxy on the root's own Python and Debian's libraries, with its keys:
    # a secret encrypted under the made Fernet key and read back, the audit and cluster keys
    # accepted by the code that reads them, and the plugin slurmd would load is 24.11's
    conf = "--config /etc/qproxy/qproxy.toml"
    root.run(f"printf 'vendor-key-1\\n' | qproxy secrets {conf} set emulator")
    assert root.run(f"qproxy secrets {conf} get emulator").stdout.strip() == "vendor-key-1"
    assert (root / "etc/qproxy/secrets.toml").read_text().count("fernet:") == 1
    root.run("python3 -c 'from pathlib import Path; "
             "from qproxy.node.audit import load_key; "
             "from qproxy.proxy.relay.auth import load_cluster_key; "
             "load_key(Path(\"/etc/qproxy/audit.key\")); "
             "load_cluster_key(Path(\"/etc/qproxy/cluster.key\"))'")
    doctor = root.run(f"qproxy doctor {conf}", check=False).stdout
    assert re.search(r"^ok .*spank_qpu\.so.*24\.11", doctor, re.M), doctor
    assert "BAD" not in doctor, doctor
    root.run("python3 -c 'import qproxy.proxy.app, qproxy.slurm.prolog, qproxy.admin.metrics'")
    metrics = root.run(f"qproxy metrics {conf}").stdout
    assert "# TYPE" in metrics, metrics

    # ---- upgrade to a rebuilt package: keys, secrets, the admin's config and drop-in kept
    keys = {key: sha(root / key) for key in KEYS}
    secrets = sha(root / "etc/qproxy/secrets.toml")
    with (root / "etc/qproxy/qproxy.toml").open("a") as f:
        f.write("# the admin's edit\n")
    with (root / DROPIN).open("a") as f:
        f.write("# the admin's drop-in edit\n")
    install("qproxy", plugin, version=UPGRADE)
    assert root.run(f"dpkg-query -W -f '${{Version}}' qproxy {plugin}").stdout == UPGRADE * 2
    assert {key: sha(root / key) for key in KEYS} == keys
    assert sha(root / "etc/qproxy/secrets.toml") == secrets
    assert "# the admin's edit" in (root / "etc/qproxy/qproxy.toml").read_text()
    assert "# the admin's drop-in edit" in (root / DROPIN).read_text()
    assert root.run(f"qproxy secrets {conf} get emulator").stdout.strip() == "vendor-key-1"

    # ---- another release's plugin package beside this one: refused, this one untouched
    proc = root.run(f"dpkg -i {wrong} 2>&1", check=False)
    assert proc.returncode != 0 and "conflicts with qproxy-spank" in proc.stdout, proc.stdout
    assert root.run(f"dpkg-query -W -f '${{Status}} ${{Version}}' {plugin}").stdout == \
        f"install ok installed {UPGRADE}"

    # ---- remove: the drop-in is disabled with the plugin (a `required` line naming a missing
    # .so would fail every job), keys and config stay; reinstalling enables the same drop-in
    root.run(f"apt-get remove -y -q {plugin} qproxy")
    assert not (root / "usr/lib/qproxy/spank_qpu.so").exists()
    assert not (root / DROPIN).exists()
    active = "\n".join(p.read_text() for p in (root / "etc/slurm/plugstack.conf.d").glob("*.conf"))
    assert "spank_qpu" not in active
    assert {key: sha(root / key) for key in KEYS} == keys
    install("qproxy", plugin, version=UPGRADE)
    assert "# the admin's drop-in edit" in (root / DROPIN).read_text()
    assert {key: sha(root / key) for key in KEYS} == keys

    # ---- purge: nothing of qproxy left
    root.run(f"apt-get purge -y -q {plugin} qproxy")
    left = sorted(p for p in root.files() - before if "qproxy" in p)
    assert left == [], left
    assert not (root / "etc/qproxy").exists() and not (root / "var/log/qproxy").exists()
    assert "qproxy" not in root.run("dpkg -l").stdout
