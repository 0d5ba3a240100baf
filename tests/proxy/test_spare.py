"""Spare proxies (qproxy/proxy/spare.py): a pre-started `qproxy serve --spare` takes each job's
arguments from the prolog's claim and forks that job's proxy (nothing of the spare's open in
it, each in its own session); it refuses other code, idles out, and the hooks' PID-reuse
guard tells its proxies apart by their start time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from qproxy.node import process, sparepool
from qproxy.slurm import proxyproc
from qproxy.slurm import spares as spare

from .conftest import read_env_file, write_config

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
       # a worktree's tests run its own code (else the spare is an install's: another identity)
       **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {})}


def _wait(cond: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _ready(state: Path) -> list[tuple[Path, int, str]]:
    return [s for s in sparepool.listing(state) if s[0].name.endswith(".sock")]


@pytest.fixture
def node(emulator: Any, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    conf = write_config(emulator, tmp_path, proxy_extra="spare_idle_seconds = 120")
    state = tmp_path / "state"
    try:
        yield conf, state
    finally:
        spare.stop_all(state)


def _argv(conf: Path, d: Path, job: str) -> list[str]:
    return ["--config", str(conf), "--job-id", job, "--user", "u", "--backend", "ibm_fez",
            "--lanes", "1", "--end-time", "9999999999", "--env-file", str(d / "proxy.env"),
            "--audit-log", str(d / "audit.jsonl"), "--ledger-file", str(d / "ledger.jsonl"),
            "--summary-file", str(d / "summary.json")]


def _serves(env_file: Path) -> list[str]:
    """The backends the proxy of this env file lists (an IAM exchange, then one request)."""
    env = read_env_file(env_file)
    r = requests.post(env["IAM_URL"] + "/identity/token", timeout=30, data={
        "grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": env["QISKIT_IBM_TOKEN"]})
    assert r.status_code == 200
    h = {"Authorization": f"Bearer {r.json()['access_token']}"}
    backends = requests.get(env["QISKIT_IBM_URL"] + "/backends", headers=h, timeout=30)
    return [b["name"] for b in backends.json()["devices"]]


def _fds(pid: int) -> dict[int, str]:
    d = Path(f"/proc/{pid}/fd")
    return {int(n): os.readlink(d / n) for n in os.listdir(d)}


def test_spare_forks_each_jobs_proxy(node: tuple[Path, Path], tmp_path: Path) -> None:
    conf, state = node
    assert spare.ensure(state, conf, 1, ENV) == 1
    assert spare.ensure(state, conf, 1, ENV) == 0  # one is starting: no second one
    _wait(lambda: _ready(state))
    [(_, zygote, spare_id)] = sparepool.listing(state)
    assert oct(os.stat(state / "spares").st_mode & 0o777) == "0o700"
    jobs = {}
    for job_id in ("51", "52"):
        d = tmp_path / f"job{job_id}"
        d.mkdir()
        got = spare.claim(state, _argv(conf, d, job_id), d / "proxy.log")
        assert got is not None and got.spare == spare_id and got.pid != zygote
        jobs[job_id] = (got, d)
        _wait(lambda d=d: (d / "proxy.env").exists(), 30)  # type: ignore[misc]
    # the spare stays for the next job: its socket is still there, in its own file
    assert [(pid, sid) for _, pid, sid in _ready(state)] == [(zygote, spare_id)]
    (a, da), (b, db) = jobs["51"], jobs["52"]
    assert a.pid != b.pid
    assert _serves(da / "proxy.env") == ["ibm_fez"] == _serves(db / "proxy.env")
    # the hooks' PID-reuse guard: the spare and both proxies share one command line, so a
    # proxy is this job's only with the start time its record holds
    assert process.is_our_proxy(a.pid, "51", spare_id, a.start)
    assert not process.is_our_proxy(a.pid, "51")  # no --job-id on its command line
    assert not process.is_our_proxy(a.pid, "51", spare_id, a.start + 1)  # a reused pid
    assert not process.is_our_proxy(zygote, "51", spare_id, a.start)  # the spare itself
    assert not process.is_our_proxy(b.pid, "51", spare_id, a.start)  # the other job's
    assert not process.is_our_proxy(a.pid, "52", "0123abcd", a.start)
    # nothing of the spare's is open in a job's proxy: no claim socket, no spare log, and
    # its stdio is the job's own log
    spare_socket = {t for t in _fds(zygote).values() if t.startswith("socket:")}
    fds = _fds(a.pid)
    assert not spare_socket & set(fds.values())
    assert fds[1] == fds[2] == str(da / "proxy.log")
    assert not any(t.endswith(f"{spare_id}.log") for t in fds.values())
    assert os.getsid(a.pid) == a.pid != os.getsid(zygote)  # its own session
    # crash containment: one job's proxy killed, the other job's and the spare carry on;
    # the spare stopped, its proxies carry on
    os.kill(b.pid, signal.SIGKILL)
    _wait(lambda: not process.alive(b.pid), 30)
    assert spare.stop_all(state) == 1
    _wait(lambda: not process.alive(zygote), 30)
    assert _serves(da / "proxy.env") == ["ibm_fez"]
    assert proxyproc.stop(a.pid, "51", spare=spare_id, start=a.start) == "terminated"
    summary = json.loads((da / "summary.json").read_text())
    assert summary["job_id"] == "51" and summary["requests"] == 4
    log = (da / "proxy.log").read_text()
    assert "job 51: proxy for ibm_fez listening" in log and "Traceback" not in log
    assert not list((state / "spares").iterdir())


def test_unacknowledged_claim_starts_no_proxy(node: tuple[Path, Path], tmp_path: Path) -> None:
    """A prolog that gave up before it read the spare's answer starts a proxy of its own: the
    proxy forked for it must never start (two proxies, one job, one never stopped)."""
    import socket

    from qproxy.node.sparepool import identity

    conf, state = node
    spare.ensure(state, conf, 1, ENV)
    _wait(lambda: _ready(state))
    [(path, zygote, _)] = _ready(state)
    job = tmp_path / "job54"
    job.mkdir()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(str(path))
    s.sendall(json.dumps({"identity": identity(), "argv": _argv(conf, job, "54"),
                          "log": str(job / "proxy.log")}).encode() + b"\n")
    answer = json.loads(s.makefile("rb").readline())
    s.close()  # no acknowledgement
    assert answer["ok"] and answer["pid"] != zygote
    _wait(lambda: not process.alive(answer["pid"]), 30)
    assert not (job / "proxy.env").exists() and not (job / "audit.jsonl").exists()
    # the spare carries on for the next claim
    assert [pid for _, pid, _ in _ready(state)] == [zygote]
    job55 = tmp_path / "job55"
    job55.mkdir()
    got = spare.claim(state, _argv(conf, job55, "55"), job55 / "proxy.log")
    assert got is not None
    _wait(lambda: (job55 / "proxy.env").exists(), 30)
    assert proxyproc.stop(got.pid, "55", spare=got.spare, start=got.start) == "terminated"


def test_spare_refuses_other_code(node: tuple[Path, Path], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A prolog of an upgraded qproxy must not be served by a spare started before."""
    conf, state = node
    spare.ensure(state, conf, 1, ENV)
    _wait(lambda: _ready(state))
    [(_, pid, _)] = sparepool.listing(state)
    monkeypatch.setattr(sparepool, "identity", lambda: "some other install")
    job = tmp_path / "job53"
    job.mkdir()
    assert spare.claim(state, _argv(conf, job, "53"), job / "proxy.log") is None
    _wait(lambda: not process.alive(pid), 30)
    assert not (job / "proxy.env").exists() and sparepool.listing(state) == []


def test_spare_retires_when_its_dependencies_change(node: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    """A security update of a third-party distribution the spare has imported (here a copy
    of prometheus_client, first on its path, replaced file by file as pip and dpkg do): the
    next claim is refused and the spare exits, so no job's proxy is forked from the old code
    (before: the identity covered qproxy's own files only and the spare kept forking)."""
    import shutil

    import prometheus_client

    conf, state = node
    site = tmp_path / "site"
    pkg = site / "prometheus_client"
    shutil.copytree(Path(prometheus_client.__file__).parent, pkg)
    repo = Path(__file__).resolve().parents[2]
    spare.ensure(state, conf, 1, {**ENV, "PYTHONPATH": f"{site}:{ENV.get('PYTHONPATH', repo)}"})
    _wait(lambda: _ready(state))
    [(_, pid, _)] = spare.listing(state)
    job = tmp_path / "job61"
    job.mkdir()
    got = spare.claim(state, _argv(conf, job, "61"), job / "proxy.log")
    assert got is not None  # the same code: served
    _wait(lambda: (job / "proxy.env").exists(), 30)
    assert proxyproc.stop(got.pid, "61", spare=got.spare, start=got.start) == "terminated"
    new = pkg / "metrics.py.new"  # the update: a new file renamed over the old one
    new.write_bytes((pkg / "metrics.py").read_bytes() + b"\n# security fix\n")
    os.replace(new, pkg / "metrics.py")
    job = tmp_path / "job62"
    job.mkdir()
    assert spare.claim(state, _argv(conf, job, "62"), job / "proxy.log") is None
    _wait(lambda: not proxyproc.alive(pid), 30)
    assert not (job / "proxy.env").exists() and spare.listing(state) == []


def test_idle_spare_exits(emulator: Any, tmp_path: Path) -> None:
    conf = write_config(emulator, tmp_path, proxy_extra="spare_idle_seconds = 0.5")
    state = tmp_path / "state"
    spare.ensure(state, conf, 1, ENV)
    _wait(lambda: sparepool.listing(state))
    [(_, pid, _)] = sparepool.listing(state)
    _wait(lambda: not process.alive(pid), 60)
    assert sparepool.listing(state) == []


def test_stop_all_and_dead_spares(node: tuple[Path, Path]) -> None:
    conf, state = node
    spare.ensure(state, conf, 2, ENV)
    _wait(lambda: len(_ready(state)) == 2)
    pids = [pid for _, pid, _ in sparepool.listing(state)]
    assert spare.stop_all(state) == 2
    _wait(lambda: not any(process.alive(p) for p in pids), 30)
    # files left by a spare that was killed are dropped by the next look
    (state / "spares" / "999999-deadbeef.sock").touch()
    assert sparepool.listing(state) == [] and not list((state / "spares").iterdir())


def test_spare_usage_errors(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "qproxy", "serve", "--spare"]
    r = subprocess.run([*run, "x"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "usage: qproxy serve --spare ID --config PATH" in r.stderr
    r = subprocess.run([*run, "abc", "--config", str(tmp_path / "none.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("qproxy serve: cannot read config")
    assert "Traceback" not in r.stderr


def test_spare_settings_are_checked(emulator: Any, tmp_path: Path) -> None:
    from qproxy.config import ConfigError, load

    assert load(write_config(emulator, tmp_path / "a")).proxy.spares == 1  # on by default
    assert load(write_config(emulator, tmp_path / "b", "spares = 0")).proxy.spares == 0
    for bad, message in (("spares = -1", r"\[proxy\].spares must be >= 0"),
                         ("spare_idle_seconds = 0", r"\[proxy\].spare_idle_seconds must be > 0")):
        with pytest.raises(ConfigError, match=message):
            load(write_config(emulator, tmp_path / "c", bad))
