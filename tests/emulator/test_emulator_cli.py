"""``qproxy emulator`` as a process: no default key (refused without one; a missing key file
is created with a random key, 0600), ready file, clean SIGTERM exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from qproxy.emulator.backends import parse_backends, parse_lanes

pytestmark = [pytest.mark.timeout(120)]


def test_parse_backends_and_lanes() -> None:
    assert parse_backends("fake_fez, ibm_kyiv=fake_kyiv") == [
        ("fake_fez", "fake_fez"),
        ("ibm_kyiv", "fake_kyiv"),
    ]
    assert parse_lanes(None, ["a", "b"]) == {"a": 1, "b": 1}
    assert parse_lanes("3", ["a", "b"]) == {"a": 3, "b": 3}
    assert parse_lanes("b=2", ["a", "b"]) == {"a": 1, "b": 2}
    with pytest.raises(ValueError):
        parse_lanes("c=2", ["a", "b"])
    with pytest.raises(ValueError):
        parse_lanes("0", ["a"])


def test_bad_arguments_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qproxy", "emulator", "--backends", "fake_nowhere"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "unknown fake backend" in proc.stderr


def test_no_key_is_refused() -> None:
    env = {k: v for k, v in os.environ.items() if k != "QPROXY_EMULATOR_API_KEY"}
    proc = subprocess.run(
        [sys.executable, "-m", "qproxy", "emulator", "--port", "0", "--backends", "fake_torino"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert proc.returncode == 2 and "no API key" in proc.stderr


def test_group_readable_key_file_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    keys = tmp_path / "keys"
    keys.write_text("k\n")
    keys.chmod(0o640)
    proc = subprocess.run(
        [sys.executable, "-m", "qproxy", "emulator", "--port", "0", "--api-key-file", str(keys)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "chmod 600" in proc.stderr


def test_created_key_ready_file_and_sigterm(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ready = tmp_path / "ready.json"
    keys = tmp_path / "emulator.key"
    env = {k: v for k, v in os.environ.items() if k != "QPROXY_EMULATOR_API_KEY"}
    log = tmp_path / "log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qproxy", "emulator", "--port", "0", "--ready-file",
             str(ready), "--backends", "fake_torino", "--api-key-file", str(keys)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        info = json.loads(ready.read_text())
        assert info["pid"] == proc.pid and info["url"] == f"http://127.0.0.1:{info['port']}"
        assert keys.stat().st_mode & 0o777 == 0o600
        key = keys.read_text().strip()
        assert len(key) > 40 and "created" in log.read_text()
        iam = info["url"] + "/identity/token"
        grant = "urn:ibm:params:oauth:grant-type:apikey"
        r = requests.post(iam, data={"grant_type": grant, "apikey": key}, timeout=10)
        assert r.status_code == 200
        old = requests.post(iam, data={"grant_type": grant,
                                       "apikey": "qproxy-emulator-default-key"}, timeout=10)
        assert old.status_code == 400  # the once-published default key is gone
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
