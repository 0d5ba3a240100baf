"""usage.jsonl is chained with the audit key and agrees with the audit logs: what the epilog
writes verifies, and each way a root-less or careless edit could lower a job's booked usage is
reported by ``qproxy audit verify-usage``. The epilog runs for real (no proxy: it books what
the ledger says), on files in tmp_path."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

from qproxy.admin import audit as audit_cli
from qproxy.config import load
from qproxy.node import usagelog
from qproxy.node.audit import load_key
from qproxy.records import ProxyRecord, UsageRecord
from qproxy.slurm import epilog
from qproxy.slurm.state import JobState

CONF = Path(__file__).resolve().parents[2] / "conf" / "qproxy.toml"


def _config(tmp_path: Path) -> Any:
    text = CONF.read_text().replace('"/run/qproxy"', f'"{tmp_path / "state"}"')
    text = text.replace('"/var/log/qproxy"', f'"{tmp_path / "audit"}"')
    text = text.replace('"/etc/qproxy/audit.key"', f'"{tmp_path / "audit.key"}"')
    (tmp_path / "q.toml").write_text(text)
    return load(tmp_path / "q.toml")


def _book(config: Any, job_id: str, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """The epilog of a job whose proxy is gone: it books what cleanup reports."""
    job = JobState.of(config, job_id)
    job.create()
    job.write_record(ProxyRecord(job_id=job_id, pid=999999, resource="ibm_fez", lanes=1))
    monkeypatch.setattr(epilog, "_leftovers", lambda *a: {
        "upstream_jobs": 2, "quantum_seconds": seconds, "cancelled_at_shutdown": []})
    epilog.finish(config, job_id, "epilog")


def _verify(config: Any, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = audit_cli.main(["verify-usage", "--config", str(config.path)])
    out = capsys.readouterr()
    return rc, out.out + out.err


@pytest.fixture
def booked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    config = _config(tmp_path)
    for job_id, seconds in (("41", 1.5), ("42", 7.25), ("43", 3.0)):
        _book(config, job_id, monkeypatch, seconds)
    return config


def _lines(config: Any) -> list[str]:
    return (config.audit_dir / "usage.jsonl").read_text().splitlines()


def _rewrite(config: Any, lines: list[str]) -> None:
    (config.audit_dir / "usage.jsonl").write_text("".join(ln + "\n" for ln in lines))


def test_epilog_lines_verify(booked: Any, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [json.loads(ln) for ln in _lines(booked)]
    assert [ln["seq"] for ln in lines] == [0, 1, 2]
    assert [ln["quantum_seconds"] for ln in lines] == [1.5, 7.25, 3.0]
    assert UsageRecord.from_json(lines[1]) is not None  # readers ignore the chain fields
    rc, out = _verify(booked, capsys)
    assert rc == 0 and "ok: 3 usage lines" in out


def test_lowered_usage_is_detected(booked: Any, capsys: pytest.CaptureFixture[str]) -> None:
    lines = _lines(booked)
    lines[1] = lines[1].replace('"quantum_seconds":7.25', '"quantum_seconds":0.0')
    assert "0.0," in lines[1]
    _rewrite(booked, lines)
    rc, out = _verify(booked, capsys)
    assert rc == 1 and "usage.jsonl:2: line was modified" in out
    assert "job 42's line differs from its audit log in quantum_seconds" in out


def test_rechained_without_the_key_is_detected(booked: Any,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A forger who rewrites the line and recomputes an unkeyed hash gains nothing."""
    from qproxy.node.audit import record_hash

    lines = [json.loads(ln) for ln in _lines(booked)]
    lines[1]["quantum_seconds"] = 0.0
    lines[1]["hash"] = record_hash(lines[1], b"not the centre's key" * 2)
    _rewrite(booked, [json.dumps(ln) for ln in lines])
    rc, out = _verify(booked, capsys)
    assert rc == 1 and "line was modified" in out


def test_deleted_lines_are_detected(booked: Any, capsys: pytest.CaptureFixture[str]) -> None:
    lines = _lines(booked)
    _rewrite(booked, [lines[0], lines[2]])  # from the middle: the chain breaks
    rc, out = _verify(booked, capsys)
    assert rc == 1 and "usage.jsonl:2: chain broken" in out
    assert "job 42 ended but usage.jsonl has no line for it" in out
    _rewrite(booked, lines[:2])  # the tail: only the audit logs know
    rc, out = _verify(booked, capsys)
    assert rc == 1 and "job 43 ended but usage.jsonl has no line for it" in out
    assert "chain broken" not in out


def test_audit_log_edit_is_reported(booked: Any, capsys: pytest.CaptureFixture[str]) -> None:
    log = booked.audit_dir / "job-42.jsonl"
    log.write_text(log.read_text().replace('"upstream_jobs":2', '"upstream_jobs":0'))
    rc, out = _verify(booked, capsys)
    assert rc == 1 and "job-42.jsonl" in out and "modified" in out


def test_needs_the_key(booked: Any, capsys: pytest.CaptureFixture[str]) -> None:
    rc = audit_cli.main(["verify-usage", str(booked.audit_dir / "usage.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "needs the audit key" in err


def _append_many(path: str, key: bytes, worker: int) -> None:
    for i in range(25):
        usagelog.append(Path(path), UsageRecord(
            job_id=f"{worker}-{i}", reason="epilog", resource="ibm_fez", lanes=1, user=None,
            time=0.0, proxy="absent"), key)


def test_concurrent_epilogs_keep_one_chain(tmp_path: Path) -> None:
    key = load_key(tmp_path / "k", create=True)
    path = tmp_path / "usage.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(path), key, w)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    count, problems = usagelog.verify(path, key)
    assert (count, problems) == (150, [])
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_chain_starts_after_older_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """An upgraded node: the unchained lines are reported, the new chain after them holds."""
    config = _config(tmp_path)
    config.audit_dir.mkdir(parents=True)
    (config.audit_dir / "usage.jsonl").write_text('{"job_id": "1", "quantum_seconds": 2.0}\n')
    _book(config, "42", monkeypatch, 1.0)
    rc, out = _verify(config, capsys)
    assert rc == 1 and out.count("\n") == 1 and "usage.jsonl:1: not a chained usage line" in out
