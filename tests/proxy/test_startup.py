"""Start and stop of `qproxy serve` as the Slurm hooks see them: the env file appears before
the app is loaded (connections wait in the backlog), a SIGTERM at any point of the start
still ends with a summary and no env file, and the job's JWTs are standard HS256."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import requests

from qproxy.node.audit import verify
from qproxy.proxy.auth import JobAuth

from .conftest import read_env_file, write_config


def _serve(conf: Path, d: Path, job: str) -> tuple[subprocess.Popen[bytes], Path]:
    env_file = d / job / "env"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qproxy", "serve", "--config", str(conf), "--job-id", job,
         "--user", "u", "--backend", "ibm_fez", "--lanes", "1", "--end-time", "9999999999",
         "--env-file", str(env_file), "--audit-log", str(d / job / "audit.jsonl")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not env_file.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    return proc, env_file


def _check_stopped(proc: subprocess.Popen[bytes], env_file: Path) -> dict[str, Any]:
    assert proc.wait(10) == 0
    assert not env_file.exists()
    summary = json.loads((env_file.parent / "summary.json").read_text())
    assert summary["upstream_jobs"] == 0 and summary["cancelled_at_shutdown"] == []
    ok, n, msg = verify(env_file.parent / "audit.jsonl", summary["audit_head"])
    assert ok and n == 3 + summary["requests"], msg  # start, requests, summary, close
    return summary


def test_sigterm_right_after_env_file(emulator: Any, tmp_path: Path) -> None:
    """The epilog of a job that never used its QPU may come while the app still loads."""
    conf = write_config(emulator, tmp_path)
    proc, env_file = _serve(conf, tmp_path, "31")
    proc.send_signal(signal.SIGTERM)
    _check_stopped(proc, env_file)


def test_early_connection_is_served(emulator: Any, tmp_path: Path) -> None:
    conf = write_config(emulator, tmp_path)
    proc, env_file = _serve(conf, tmp_path, "32")
    env = read_env_file(env_file)
    r = requests.post(env["IAM_URL"] + "/identity/token", timeout=30, data={
        "grant_type": "urn:ibm:params:oauth:grant-type:apikey",
        "apikey": env["QISKIT_IBM_TOKEN"]})
    assert r.status_code == 200
    h = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert requests.get(env["QISKIT_IBM_URL"] + "/backends", headers=h, timeout=30).ok
    proc.send_signal(signal.SIGTERM)
    summary = _check_stopped(proc, env_file)
    assert summary["requests"] == 2


def test_hs256_tokens() -> None:
    a = JobAuth("tok", "7", 60)
    token, exp = a.mint()
    claims = jwt.decode(token, a._key, algorithms=["HS256"], issuer="qproxy")
    assert claims["sub"] == "slurm_job:7" and claims["exp"] == exp
    now = int(time.time())
    theirs = jwt.encode({"iss": "qproxy", "iat": now, "exp": now + 60}, a._key,
                        algorithm="HS256")
    assert a.check_jwt(theirs) is None
    bad = [
        jwt.encode({"iss": "other", "iat": now, "exp": now + 60}, a._key, algorithm="HS256"),
        jwt.encode({"iss": "qproxy", "exp": now + 60}, a._key, algorithm="HS256"),
        jwt.encode({"iss": "qproxy", "iat": now + 3600, "exp": now + 7200}, a._key,
                   algorithm="HS256"),
        jwt.encode({"iss": "qproxy", "iat": now, "exp": now + 60}, os.urandom(32),
                   algorithm="HS256"),
        token.rsplit(".", 1)[0] + ".",
        "x.y", "", "a.b.c", token + "A",
    ]
    for t in bad:
        assert a.check_jwt(t) == "invalid access token", t
    # alg "none" with the real claims and no signature
    head = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    assert a.check_jwt(f"{head}.{token.split('.')[1]}.") == "invalid access token"
    expired = jwt.encode({"iss": "qproxy", "iat": now - 120, "exp": now - 60}, a._key,
                         algorithm="HS256")
    assert "expired" in (a.check_jwt(expired) or "")
