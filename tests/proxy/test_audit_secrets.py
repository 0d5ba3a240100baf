"""Audit hash chain and the secrets store (files only, no proxy)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from qproxy import config as cfg
from qproxy.node.audit import AuditLog, verify
from qproxy.secrets import SecretsError, get_secret


def _log(path: Path, n: int = 5) -> AuditLog:
    log = AuditLog(path, job_id="1", user="u")
    for i in range(n):
        log.record("request", method="GET", path=f"/p/{i}", status=200)
    return log


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qproxy", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_unstructured_writer_appends_the_same_records(tmp_path: Path) -> None:
    """The epilog's structlog-free writer must produce what structlog does (same fields,
    same rendering) and continue the chain."""
    path = tmp_path / "a.jsonl"
    a = AuditLog(path, job_id="1", user="u")
    a.record("job_end", reason="epilog", lanes=2, cancelled=[])
    a.close()
    b = AuditLog(path, structured=False, job_id="1", user="u")
    b.record("job_end", reason="epilog", lanes=2, cancelled=[])
    head = b.head
    b.close()
    assert verify(path, head)[:2] == (True, 4)  # each writer ends with its close record
    lines = path.read_bytes().splitlines()
    first, second = (orjson.loads(x) for x in lines[::2])
    assert [orjson.loads(x)["event"] for x in lines[1::2]] == ["close", "close"]
    assert sorted(first) == sorted(second)
    drop = {"seq", "prev", "hash", "time"}
    assert {k: v for k, v in first.items() if k not in drop} == {
        k: v for k, v in second.items() if k not in drop}
    # canonical rendering (sorted keys, compact) on both lines
    assert all(x == orjson.dumps(orjson.loads(x), option=orjson.OPT_SORT_KEYS) for x in lines)


def test_audit_chain_detects_tampering(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    log = _log(path)
    head = log.head
    log.close()
    assert verify(path, head)[0]
    lines = path.read_bytes().splitlines()
    # reopening continues the chain
    log2 = AuditLog(path)
    log2.record("summary", upstream_jobs=0)
    log2.close()
    assert verify(path)[:2] == (True, 8)  # 5 + close, summary + close

    def broken(new_lines: list[bytes]) -> tuple[bool, int, str]:
        bad = tmp_path / "bad.jsonl"
        bad.write_bytes(b"\n".join(new_lines) + b"\n")
        return verify(bad)

    rec = orjson.loads(lines[2])
    rec["status"] = 500
    edited = [*lines[:2], orjson.dumps(rec), *lines[3:]]
    assert broken(edited)[:2] == (False, 3)
    assert broken(lines[:1] + lines[2:])[:2] == (False, 2)  # deleted
    assert broken([lines[0], lines[2], lines[1], *lines[3:]])[:2] == (False, 2)  # reordered
    assert broken(lines[1:])[:2] == (False, 1)  # first deleted
    assert verify(path, expect_head=head)[0]  # records appended after the head are fine
    cut = tmp_path / "cut.jsonl"  # records removed at the end: a valid chain, but no final
    cut.write_bytes(b"\n".join(lines[:4]) + b"\n")  # record and not up to head
    assert verify(cut, require_final=False)[0] and not verify(cut, head)[0]
    assert verify(cut)[2].startswith("no final record")
    # CLI
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(edited) + b"\n")
    r = _cli("audit", "verify", str(bad))
    assert r.returncode == 1 and ":3:" in r.stderr
    assert _cli("audit", "verify", str(path)).returncode == 0


def _config(tmp_path: Path) -> Path:
    conf = tmp_path / "qproxy.toml"
    conf.write_text('[paths]\nsecrets_file = "secrets.toml"\nsecrets_key_file = "secrets.key"\n')
    return conf


def test_secrets_cli_roundtrip_and_permissions(tmp_path: Path) -> None:
    conf_path = _config(tmp_path)
    assert _cli("secrets", "--config", str(conf_path), "init-key").returncode == 0
    value = "vendor-" + os.urandom(16).hex()
    r = _cli("secrets", "--config", str(conf_path), "set", "ibm", stdin=value + "\n")
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "secrets.toml").read_text()
    assert value not in text and "fernet:" in text
    assert (tmp_path / "secrets.toml").stat().st_mode & 0o777 == 0o600
    r = _cli("secrets", "--config", str(conf_path), "get", "ibm")
    assert r.stdout.strip() == value
    assert "ibm\tencrypted" in _cli("secrets", "--config", str(conf_path), "list").stdout
    conf = cfg.load(conf_path)
    assert get_secret(conf, "ibm") == value
    os.chmod(tmp_path / "secrets.key", 0o640)
    with pytest.raises(SecretsError, match="group/other"):
        get_secret(conf, "ibm")
    os.chmod(tmp_path / "secrets.key", 0o600)
    os.chmod(tmp_path / "secrets.toml", 0o604)
    r = _cli("secrets", "--config", str(conf_path), "get", "ibm")
    assert r.returncode == 1 and "chmod 600" in r.stderr and value not in r.stderr
