"""The lower items of issue 24, each as a unit: the Slurm-mode cache writer and the atomic
writer with planted symlinks, `qproxy metrics --listen` under held connections, `qproxy
emulator device` against a user's listener, `qproxy doctor` with IBM's spank_qrmi in the
plugstack, the GRES example, and a spare's identity after a dependency changed on disk."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from qproxy.client.slurm_mode import targetcache
from qproxy.files import atomic_write

ROOT = Path(__file__).resolve().parents[2]


def _backend() -> Any:
    doc = SimpleNamespace(to_dict=lambda: {"n_qubits": 2})
    return SimpleNamespace(configuration=lambda: doc, properties=lambda: doc)


def _plant(d: Path, name: str, victim: Path) -> None:
    """Symlinks at the temp names the next pids would use (what a neighbour can do in a
    directory it controls), all pointing at the victim."""
    for pid in range(os.getpid() - 2, os.getpid() + 64):
        link = d / f".{name}.{pid}.tmp"
        if not link.is_symlink():
            link.symlink_to(victim)


def test_target_cache_writer_refuses_a_planted_directory(tmp_path: Path) -> None:
    shared = tmp_path / "project"
    shared.mkdir(mode=0o777)
    shared.chmod(0o1777)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    planted = shared / ".targets"  # another user's, writable by all
    planted.mkdir()
    planted.chmod(0o777)
    _plant(planted, "ibm_torino.json", victim)
    path = targetcache.path_for(shared, "ibm_torino")
    with pytest.raises(ValueError, match="writable by others"):
        targetcache.write(path, _backend())
    assert victim.read_text() == "precious" and not path.exists()
    # .targets a symlink to a directory elsewhere: not followed either
    other = tmp_path / "other"
    other.mkdir()
    link = tmp_path / "w2"
    link.mkdir()
    (link / ".targets").symlink_to(other)
    with pytest.raises(OSError):
        targetcache.write(targetcache.path_for(link, "ibm_torino"), _backend())
    assert not list(other.iterdir())


def test_target_cache_writer_never_follows_a_temp_name(tmp_path: Path) -> None:
    """Even in the user's own directory, a symlink left at the old predictable temp name
    is not written through."""
    work = tmp_path / "work"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    path = targetcache.path_for(work, "ibm_torino")
    path.parent.mkdir(parents=True, mode=0o700)
    _plant(path.parent, path.name, victim)
    targetcache.write(path, _backend())
    assert victim.read_text() == "precious"
    assert not path.is_symlink() and targetcache.trusted(path)
    assert '"n_qubits": 2' in path.read_text()


def test_atomic_write_never_follows_a_temp_name(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "d" / "out.json"
    target.parent.mkdir()
    _plant(target.parent, target.name, victim)
    atomic_write(target, "{}")
    assert victim.read_text() == "precious" and target.read_text() == "{}"
    assert not target.is_symlink() and target.stat().st_mode & 0o777 == 0o600


def _nodes(expr: str) -> list[str]:
    """node[01-04] / a,b -> names (enough for the examples)."""
    import re

    out: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?", expr):
        m = re.fullmatch(r"(.*)\[(\d+)-(\d+)\]", part)
        if m:
            width = len(m.group(2))
            out += [f"{m.group(1)}{i:0{width}d}"
                    for i in range(int(m.group(2)), int(m.group(3)) + 1)]
        else:
            out.append(part)
    return out


def test_gres_example_attaches_the_qpu_to_one_node() -> None:
    """docs/admin.md: a GRES QPU is attached to particular nodes; the example gave qpu:3 to
    four nodes (12 lanes of a 3-lane device)."""
    import re

    with_qpu = []
    for line in (ROOT / "conf" / "slurm-gres.conf").read_text().splitlines():
        f = dict(re.findall(r"(\w+)=(\S+)", line.split("#", 1)[0]))
        if "NodeName" in f and "qpu" in f.get("Gres", ""):
            with_qpu += _nodes(f["NodeName"])
    assert len(with_qpu) == 1, with_qpu
    gres = [dict(re.findall(r"(\w+)=(\S+)", ln)) for ln in
            (ROOT / "conf" / "gres.conf").read_text().splitlines() if ln.strip()[:1] not in "#"]
    assert [_nodes(g.get("NodeName", "*")) for g in gres if g.get("Name") == "qpu"] == [with_qpu]


def test_doctor_reports_spank_qrmi_in_an_included_plugstack(tmp_path: Path) -> None:
    """IBM's spank_qrmi (vendor key into the job's environment) loaded through an
    ``include`` of plugstack.conf is reported, and spank_qpu is found through one too."""
    import subprocess
    import sys

    conf = ROOT / "conf" / "qproxy.toml"
    so = tmp_path / "spank_qpu.so"
    so.write_bytes(b"\x7fELF\0qpu_built_for_slurm=24.11.5\0")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "slurmd").write_text("#!/bin/sh\necho 'slurm 24.11.5'\n")
    (bindir / "slurmd").chmod(0o755)
    d = tmp_path / "plugstack.conf.d"
    d.mkdir()
    (d / "10-qpu.conf").write_text(f"required {so} config={conf}\n")
    (d / "20-qrmi.conf").write_text(
        "optional /usr/lib64/slurm/spank_qrmi.so /etc/slurm/qrmi_config.json\n")
    plugstack = tmp_path / "plugstack.conf"
    plugstack.write_text("# site plugins\ninclude plugstack.conf.d/*.conf\n")
    out = subprocess.run([sys.executable, "-m", "qproxy", "doctor", "--config", str(conf),
                          "--plugstack", str(plugstack)], capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{bindir}:/usr/bin:/bin"}, check=False)
    bad = [ln for ln in out.stdout.splitlines() if ln.startswith("BAD")]
    assert out.returncode == 1
    assert any("spank_qrmi.so" in ln and "20-qrmi.conf" in ln and "API key" in ln
               for ln in bad), out.stdout
    assert any(ln.startswith("ok ") and f"plugin {so}: built for Slurm 24.11.5" in ln
               for ln in out.stdout.splitlines()), out.stdout
    plugstack.write_text(f"required {so} config={conf}\n")  # without it: nothing about qrmi
    out = subprocess.run([sys.executable, "-m", "qproxy", "doctor", "--config", str(conf),
                          "--plugstack", str(plugstack)], capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{bindir}:/usr/bin:/bin"}, check=False)
    assert "spank_qrmi.so" not in out.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="the listener runs as nobody: needs root")
def test_emulator_device_sends_no_key_to_a_users_listener(tmp_path: Path) -> None:
    """A local user bound the emulator's port: `qproxy emulator device` must not hand it the
    emulator's key (the proxy's listener-owner guard); a root-owned listener gets it."""
    import http.server
    import json
    import subprocess
    import sys
    import threading

    from tests.proxy import hostile

    key_file = tmp_path / "emulator.key"
    key_file.write_text("emu-secret-key-1234567890\n")
    key_file.chmod(0o600)

    def device(port: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "qproxy", "emulator", "device", "fake_fez", "offline",
             "--url", f"http://127.0.0.1:{port}", "--api-key-file", str(key_file)],
            capture_output=True, text=True, timeout=60, check=False)

    listener, port = hostile.start_listener(8)
    r = device(port)
    got = hostile.listener_received(listener, 30)
    assert "emu-secret-key" not in got, got[:300]
    assert r.returncode == 1 and "uid 65534, not root" in r.stderr, r.stderr

    seen: list[str] = []

    class Root(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802 - http.server's name
            seen.append(self.headers.get("Authorization", ""))
            body = json.dumps({"backend": "fake_fez", "status": "offline",
                               "message": "offline"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_a: Any) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Root)
    t = threading.Thread(target=srv.handle_request, daemon=True)
    t.start()
    try:
        r = device(srv.server_address[1])
    finally:
        t.join(10)
        srv.server_close()
    assert r.returncode == 0 and "fake_fez: offline" in r.stdout, r.stderr
    assert seen == ["apikey emu-secret-key-1234567890"]


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(ln.split()[1]) for ln in fh if ln.startswith("Threads:"))


@pytest.mark.skipif(os.geteuid() != 0, reason="the neighbour runs as nobody: needs root")
def test_metrics_listen_holds_no_thread_per_connection(tmp_path: Path) -> None:
    """A neighbour (uid 65534) opens 300 idle connections and trickles headers on 4 more:
    the root server never holds more than LISTEN_THREADS threads (the neighbour's uid at
    most LISTEN_PER_UID), ends every connection within LISTEN_SECONDS however slowly it
    sends, and root's scrape is served meanwhile (before: 300 threads, held as long as the
    neighbour liked)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from qproxy.admin.metrics import LISTEN_PER_UID, LISTEN_SECONDS, LISTEN_THREADS
    from tests.proxy import hostile

    conf = tmp_path / "q.toml"
    conf.write_text(f"""
[paths]
state_dir = "{tmp_path / 'state'}"
audit_dir = "{tmp_path / 'audit'}"
secrets_file = "{tmp_path / 'secrets.toml'}"
[upstreams.emu]
url = "http://127.0.0.1:1/api/v1"
iam_url = "http://127.0.0.1:1"
instance = "crn:v1:x"
api_key_secret = "emu"
[resources.ibm_fez]
upstream = "emu"
backend = "fake_fez"
lanes = 4
""")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "qproxy", "metrics", "--config", str(conf),
                               "--listen", f"127.0.0.1:{port}"],
                              stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None and "serving" in server.stderr.readline()
        work = tmp_path / "nobody"
        work.mkdir(mode=0o777)
        work.chmod(0o777)
        idle = hostile.attacker("hold", str(port), "300", "8", cwd=work)
        slow = hostile.slowloris(port, 4, 9.0)
        deadline = time.monotonic() + 20
        while not (work / "holding").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert scrape.status == 200 and b"qproxy_" in scrape.read()
        peak = 0
        while idle.poll() is None or slow.poll() is None:  # ~9 s
            peak = max(peak, _threads(server.pid))
            time.sleep(0.1)
        held = hostile.attacker_result(idle, 60)["hold"]
        trickled = hostile.slowloris_result(slow, 60)
        print(f"most threads while a neighbour held 300 idle + 4 slow connections: {peak}; "
              f"neighbour: {held}; slow ones closed after {[c['closed'] for c in trickled]} s")
        assert peak <= LISTEN_PER_UID + 2, peak  # the neighbour's share, main, root's scrape
        assert held["held"] <= LISTEN_PER_UID, held
        assert all(c["closed"] is not None and c["closed"] < LISTEN_SECONDS + 1.5
                   for c in trickled), trickled
        assert LISTEN_THREADS < 300
    finally:
        server.terminate()
        server.wait(10)


def test_spare_identity_covers_the_interpreter(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A Python security update replaces the interpreter at the same path: the identity a
    prolog sends must differ from the spare's (before: only the path was in it)."""
    import sys

    from qproxy.proxy.spare import identity

    exe = tmp_path / "python3"
    exe.write_bytes(b"old build")
    monkeypatch.setattr(sys, "executable", str(exe))
    before = identity()
    new = tmp_path / "python3.new"
    new.write_bytes(b"new build, same path")
    os.replace(new, exe)
    assert identity() != before
    assert sys.version in identity()
