"""The node's audit space (qproxy/node/auditbudget.py) and cheap repeated records
(qproxy/node/audit.py), issue 24 item 6: the accounting between writers and processes, its
rebuild from audit_dir, the refusal an over-share writer gets, and run summaries that keep the
chain verifiable."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from qproxy.admin.doctor import check_audit_space, mount_of
from qproxy.config import ConfigError, load
from qproxy.node import auditbudget
from qproxy.node.audit import MAX_RUNS, AuditLog, AuditUnavailable, verify
from qproxy.node.auditbudget import NodeBudget, Share

KEY = b"k" * 64


def _budget(tmp_path: Path, node: int, user: int, **kw: Any) -> NodeBudget:
    return NodeBudget(tmp_path / "state", tmp_path / "audit", node, user, **kw)


def _log(tmp_path: Path, name: str, user: str, budget: NodeBudget | None = None,
         chunk: int | None = None, **kw: Any) -> AuditLog:
    path = tmp_path / "audit" / f"job-{name}.jsonl"
    share = Share(budget, user, path, chunk) if budget is not None else None
    log = AuditLog(path, key=KEY, share=share, job_id=name, user=user, **kw)
    log.record("start", **log.chain_fields())
    return log


def _records(log: AuditLog) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in log.path.read_bytes().splitlines()]


def _fill(log: AuditLog, n: int = 100_000) -> int:
    """Ordinary ~300-byte records until the log refuses one; how many were written."""
    for i in range(n):
        try:
            log.record("request", status=200, path=f"/api/v1/jobs/{i:06d}" + "x" * 200)
        except AuditUnavailable:
            return i
    raise AssertionError("never refused")


# ---------------------------------------------------------------------------- shares
def test_one_user_cannot_take_the_space_another_needs(tmp_path: Path) -> None:
    """mallory's jobs stop at her share; alice's job still writes, and the node total stays
    within the node budget (framing records excepted: a log must be able to end)."""
    budget = _budget(tmp_path, node=200_000, user=60_000)
    mallory = [_log(tmp_path, f"m{i}", "mallory", budget, chunk=8192, max_bytes=30_000)
               for i in range(3)]
    written = sum(_fill(log) for log in mallory)
    assert 100 < written < 60_000 / 400, written  # records of ~480 bytes
    why = mallory[1].available()
    assert why is not None and "audit space of user mallory" in why
    alice = _log(tmp_path, "a1", "alice", budget, chunk=8192)
    for i in range(100):
        alice.record("request", status=200, path=f"/api/v1/jobs/{i}")
    for log in [*mallory, alice]:
        log.close()
    used = budget.usage()["users"]
    sizes = {u: sum(p.stat().st_size for p in (tmp_path / "audit").glob(f"job-{u[0]}*"))
             for u in ("mallory", "alice")}
    assert used == sizes  # closed writers gave back their unused grants
    assert sizes["mallory"] <= 60_000 + 3 * 1024, sizes  # + each log's framing records
    recs = _records(mallory[1])  # the first is stopped by its own cap, the second by the share
    assert [r["event"] for r in recs].count("audit_budget") == 1
    assert recs[-1]["event"] == "close"
    for log in [*mallory, alice]:
        assert verify(log.path, key=KEY)[0]


def test_node_budget_binds_without_user_shares(tmp_path: Path) -> None:
    budget = _budget(tmp_path, node=30_000, user=0)
    a, b = _log(tmp_path, "1", "a", budget, chunk=4096), _log(tmp_path, "2", "b", budget,
                                                              chunk=4096)
    _fill(a)
    assert _fill(b) <= 4096 // 400  # what was left of the chunk b took for its start record
    with pytest.raises(AuditUnavailable, match="node's audit space"):
        b.record("request", status=200)
    a.close()
    b.close()
    # + the framing records: b's audit_budget and close, a's close
    assert sum(budget.usage()["users"].values()) <= 30_000 + 2048


def test_the_ledger_is_touched_once_per_chunk(tmp_path: Path, monkeypatch: Any) -> None:
    """Per record the writer only counts in memory: 2,000 records of ~300 bytes with a
    64 KiB chunk take ~10 grants, not 2,000 locked read-modify-writes."""
    budget = _budget(tmp_path, node=1 << 30, user=1 << 28)
    grants = []
    real = budget.grant

    def counting(*a: Any, **kw: Any) -> int:
        grants.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(budget, "grant", counting)
    log = _log(tmp_path, "1", "alice", budget, chunk=64 * 1024)
    for i in range(2000):
        log.record("request", status=200, path=f"/api/v1/jobs/{i}" + "x" * 200)
    assert len(grants) <= log.size // (64 * 1024) + 1, (len(grants), log.size)
    log.close()
    # a chunk is at most 1/32 of the smallest limit (and at least 4 KiB)
    assert Share(_budget(tmp_path, 0, 1 << 20), "a", log.path).chunk == 32 * 1024
    assert Share(_budget(tmp_path, 40_000, 0), "a", log.path).chunk == 4096
    assert Share(_budget(tmp_path, 1 << 40, 0), "a", log.path).chunk == auditbudget.CHUNK


def _grab(args: tuple[str, str, str]) -> int:
    """In another process: take 1 KiB grants for a user until refused; bytes granted."""
    state, audit, user = args
    b = NodeBudget(Path(state), Path(audit), 100 * 1024, 60 * 1024)
    share = Share(b, user, Path(audit) / f"job-{os.getpid()}.jsonl", chunk=1024)
    got = 0
    while share.take(1024, got):
        got += 1024
    return got


def test_processes_share_one_locked_ledger(tmp_path: Path) -> None:
    """Eight processes at once, four per user: no byte granted twice, no user past 60 KiB,
    the node never past 100 KiB."""
    (tmp_path / "audit").mkdir()
    args = [(str(tmp_path / "state"), str(tmp_path / "audit"), u) for u in "ab" * 4]
    with multiprocessing.get_context("fork").Pool(8) as pool:
        got = pool.map(_grab, args)
    per_user = {u: sum(g for g, a in zip(got, args, strict=True) if a[2] == u) for u in "ab"}
    assert per_user["a"] == per_user["b"] == 50 * 1024 or (
        sum(per_user.values()) == 100 * 1024 and max(per_user.values()) <= 60 * 1024), per_user
    assert budget_users(tmp_path) == per_user


def budget_users(tmp_path: Path) -> dict[str, int]:
    led = orjson.loads((tmp_path / "state" / "audit-budget" / "ledger.json").read_bytes())
    return dict(led["users"])


# ---------------------------------------------------------------------------- rebuild
def test_ledger_rebuilt_from_audit_dir(tmp_path: Path) -> None:
    """/run lost after a reboot: the ledger is rebuilt from the logs' sizes and owners;
    files with no user (usage.jsonl) count for the node only."""
    budget = _budget(tmp_path, node=1 << 20, user=1 << 19)
    for name, user in (("1", "alice"), ("2", "bob"), ("3", "alice")):
        log = _log(tmp_path, name, user)
        log.record("start")
        log.record("request", status=200)
        log.close()
    (tmp_path / "audit" / "usage.jsonl").write_bytes(b"{}\n" * 10)
    users = budget.usage()["users"]
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "audit").iterdir()}
    assert users == {"alice": sizes["job-1.jsonl"] + sizes["job-3.jsonl"],
                     "bob": sizes["job-2.jsonl"], "": 30}
    conf = tmp_path / "q.toml"
    conf.write_text(f'[paths]\nstate_dir = "{tmp_path}/state"\naudit_dir = "{tmp_path}/audit"\n')
    out = subprocess.run([sys.executable, "-m", "qproxy", "audit", "space", "--config", str(conf),
                          "--rescan"], capture_output=True, text=True, check=True).stdout
    assert f"  bob: {sizes['job-2.jsonl']} of 1073741824" in out, out


def test_archived_logs_and_dead_writers_free_space(tmp_path: Path) -> None:
    """A refusal rescans first (at most every RESCAN_SECONDS): logs the admin archived and
    the unused grant of a writer that died are given back."""
    now = [1000.0]
    budget = _budget(tmp_path, node=0, user=20_000, clock=lambda: now[0])
    old = _log(tmp_path, "1", "alice", budget, chunk=2048)
    _fill(old)
    old.close()
    # a writer that died holding a grant: a pid that is not running
    led = budget.usage()
    led["writers"]["999999999:1:/x"] = {"user": "alice", "path": "/x", "end": 5000}
    led["users"]["alice"] += 5000
    auditbudget.atomic_write(budget.ledger_path, orjson.dumps(led))
    new = _log(tmp_path, "2", "alice", budget, chunk=2048)
    with pytest.raises(AuditUnavailable):
        new.record("request", status=200)
    old.path.rename(tmp_path / "archived.jsonl")  # out of audit_dir
    now[0] += auditbudget.RESCAN_SECONDS
    new._retry_at = 0.0  # its retry time runs on the monotonic clock
    new.record("request", status=200)
    led = budget.usage()
    assert "999999999:1:/x" not in led["writers"]
    assert led["users"]["alice"] <= new.size + 2048
    new.close()
    recs = _records(new)
    assert [r["event"] for r in recs] == ["start", "audit_budget", "audit_gap", "request",
                                          "close"]
    assert verify(new.path, key=KEY)[0]


# ---------------------------------------------------------------------------- repeats
def test_a_run_of_errors_is_first_record_plus_count(tmp_path: Path) -> None:
    """1,000 identical-shape 404s with ever new ~8 KB paths: the first in full, one
    `repeated` record with the count and the last, amortised < 5 bytes a request; a success
    in between keeps its own record; the chain verifies and a changed count does not."""
    log = _log(tmp_path, "1", "alice")
    for i in range(1000):
        log.record("request", repeat="404 GET -", status=404, path=f"/{i}" + "%01" * 2700)
        if i == 500:
            log.record("request", repeat=None, status=200, path="/api/v1/backends")
    log.record("summary", requests=1001)
    log.close()
    recs = _records(log)
    assert [r["event"] for r in recs] == ["start", "request", "request", "repeated", "summary",
                                          "close"]
    rep = recs[3]
    assert rep["count"] == 999 and rep["first_seq"] == 1 and rep["last"]["path"].startswith(
        "/999") and rep["shape"] == "404 GET -"
    assert log.size < 5000, log.size  # 5 bytes a request, ~1,900 before
    assert verify(log.path, key=KEY)[0]
    lines = log.path.read_bytes().splitlines()
    lines[3] = lines[3].replace(b'"count":999', b'"count":9')
    log.path.write_bytes(b"\n".join(lines) + b"\n")
    ok, line, msg = verify(log.path, key=KEY)
    assert not ok and line == 4 and "modified" in msg


def test_runs_end_with_their_window_and_when_too_many_shapes(tmp_path: Path) -> None:
    now = [0.0]
    log = _log(tmp_path, "1", "alice", clock=lambda: now[0], repeat_seconds=10)
    for _ in range(3):
        log.record("request", repeat="404 GET -", status=404)
    now[0] = 10.0  # the window is over: the next record ends the run first
    log.record("request", repeat="404 GET -", status=404)
    events = [r["event"] for r in _records(log)]
    assert events == ["start", "request", "repeated", "request"], events
    for k in range(MAX_RUNS + 1):  # one shape too many: the oldest run ends
        log.record("request", repeat=f"403 GET /r{k}", status=403)
        log.record("request", repeat=f"403 GET /r{k}", status=403)
    recs = _records(log)  # the 404 run (nothing counted) ended silently, then /r0's
    assert recs[-2]["event"] == "repeated" and recs[-1]["event"] == "request"
    assert recs[-2]["shape"] == "403 GET /r0" and recs[-2]["count"] == 1
    log.close()
    recs = _records(log)
    assert sum(r["count"] for r in recs if r["event"] == "repeated") == 2 + MAX_RUNS + 1
    assert verify(log.path, key=KEY)[0]


# ---------------------------------------------------------------------------- config, doctor
def test_config_reports_audit_limits_with_the_other_problems(tmp_path: Path) -> None:
    conf = tmp_path / "q.toml"
    conf.write_text('[proxy]\naudit_max_bytes = 300\naudit_user_max_bytes = 200\n'
                    'audit_node_max_bytes = 100\naudit_repeat_seconds = -1\nlanes_mode = "x"\n')
    with pytest.raises(ConfigError) as err:
        load(conf)
    text = str(err.value)
    assert "has 4 problems" in text
    assert "audit_max_bytes (300) must be at most audit_user_max_bytes (200)" in text
    assert "audit_user_max_bytes (200) must be at most audit_node_max_bytes (100)" in text
    assert "audit_repeat_seconds must be >= 0, got -1" in text
    conf.write_text("[proxy]\naudit_max_bytes = 0\naudit_user_max_bytes = 0\n")
    load(conf)  # no per-job cap, no shares: a choice, not a problem


def test_doctor_audit_dir_filesystem(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        "60 27 0:50 / /var/log/qproxy rw - xfs /dev/vdb rw\n"
        "61 27 0:51 / /srv/a\\040b rw - ext4 /dev/vdc rw,prjquota\n"
        "62 27 254:0 /var/x /srv/bind rw - ext4 /dev/vda rw\n")
    assert mount_of(Path("/srv/a b/audit"), info) == ("/srv/a b", "/", "ext4", {
        "rw", "prjquota"})
    conf = tmp_path / "q.toml"
    for audit_dir, want in (("/var/log/qproxy", "its own"), ("/srv/a b/x", "with quotas"),
                            ("/srv/bind", "no quotas"), ("/var/log/other", "no quotas")):
        conf.write_text(f'[paths]\naudit_dir = "{audit_dir}"\n')
        (ok, line), *_ = check_audit_space(load(conf), info)
        assert want in line and (ok is None) == (want == "no quotas"), line
    conf.write_text(f'[paths]\naudit_dir = "{tmp_path}"\n[proxy]\n'
                    f'audit_node_max_bytes = {1 << 60}\naudit_user_max_bytes = 0\n')
    assert any("larger than" in line for _, line in check_audit_space(load(conf)))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_doctor_exit_status_with_a_warning_and_an_own_filesystem(tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    audit.mkdir()
    conf = tmp_path / "q.toml"
    conf.write_text(f'[paths]\naudit_dir = "{audit}"\nstate_dir = "{tmp_path}/s"\n')
    out = subprocess.run([sys.executable, "-m", "qproxy", "doctor", "--config", str(conf),
                          "--plugstack", str(tmp_path / "none")], capture_output=True,
                         text=True, check=False)
    assert f"WRN audit_dir {audit}: shares the filesystem" in out.stdout, out.stdout
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(audit)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = subprocess.run([sys.executable, "-m", "qproxy", "doctor", "--config", str(conf),
                              "--plugstack", str(tmp_path / "none")], capture_output=True,
                             text=True, check=False)
    finally:
        subprocess.run(["umount", "-l", str(audit)], check=False)
    assert f"ok  audit_dir {audit}: a filesystem of its own (tmpfs)" in out.stdout
    assert "WRN [proxy].audit_node_max_bytes" in out.stdout  # 4 GiB > 1 MiB
