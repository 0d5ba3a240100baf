"""The small units behind tests/proxy/test_hostile.py: tags, the unauthenticated bucket, the
in-flight budget, session rules, bounded audit fields and the audit cap."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qproxy.node.audit import AuditLog, AuditUnavailable, bound, verify
from qproxy.proxy.policy.errors import PolicyError
from qproxy.proxy.policy.inflight import InflightBudget
from qproxy.proxy.policy.sessions import SessionPolicy
from qproxy.proxy.policy.tags import is_reserved, merge_tags
from qproxy.proxy.policy.unauth import UnauthGate


@pytest.mark.parametrize("tag", ["slurm_job:1", "SLURM_JOB:999", " slurm_job:999",
                                 "slurm\u200b_job:1", "\u0455lurm_job:1", "ｓｌｕｒｍ_job:1",
                                 "ṡlurm_user:x", "slurm-account:x"])
def test_reserved_tags(tag: str) -> None:
    assert is_reserved(tag)
    assert merge_tags([tag, "ok"], ["slurm_job:7"]) == ["ok", "slurm_job:7"]


@pytest.mark.parametrize("tag", [
    "\u3164slurm_job:1", "\u2800slurm_job:1", "\uffa0slurm_user:x", "\u115fslurm_job:1",
    "\u2800\u3164 slurm_account:x", "slurm\u180e_job:1", "\U000e0020slurm_job:1",
    "s\u0489lurm_job:1", "\x01slurm_job:1", "\U0001d159slurm_job:1", "slurm\ufe0f_job:1"])
def test_reserved_tags_behind_invisible_fillers(tag: str) -> None:
    """Tags that show as ``slurm_...`` because what precedes or splits it renders as nothing
    (issue 24: U+3164 and U+2800 passed the filter)."""
    assert is_reserved(tag)


@pytest.mark.parametrize("tag", ["mine", "slurmjob", "\u2800", "\u3164x", "日本語のタグです",
                                 "slurm", "lurm_x"])
def test_ordinary_tags(tag: str) -> None:
    assert not is_reserved(tag)


def test_unauth_bucket_and_summary() -> None:
    now = [0.0]
    g = UnauthGate(rate=2, burst=3, window=10, clock=lambda: now[0])
    assert [g.allow() for _ in range(4)] == [True, True, True, False]
    now[0] = 1.0
    assert g.allow() and g.allow() and not g.allow()
    for status in (401, 401, 429):
        g.count(status, "GET", "/" + "x" * 500)
    assert not g.due()
    now[0] = 11.0
    assert g.due()
    s = g.take_summary()
    assert s is not None and s["requests"] == 3 and s["statuses"] == {"401": 2, "429": 1}
    assert len(s["first"]) < 80 and g.take_summary() is None


def test_unauth_buckets_are_per_uid() -> None:
    """One uid's junk empties its own bucket only (issue 24: one shared bucket let a
    neighbour turn the job's refusals into 429s); the summary says whose they were."""
    now = [0.0]
    g = UnauthGate(rate=1, burst=2, window=10, clock=lambda: now[0])
    assert [g.allow(65534) for _ in range(3)] == [True, True, False]
    assert g.exhausted(65534) and not g.exhausted(1000) and not g.exhausted(None)
    assert g.allow(1000) and g.allow(None)
    for uid in (65534, 65534, 1000, None):
        g.count(429, "GET", "/x", uid)
    now[0] = 10.0
    s = g.take_summary()
    assert s is not None and s["uids"] == {"1000": 1, "65534": 2, "unknown": 1}


def test_inflight_budget_waits_then_refuses() -> None:
    async def run() -> None:
        b = InflightBudget(30, wait_seconds=0.2)
        async with b.hold(10):  # 3 copies: the whole budget
            with pytest.raises(PolicyError) as e:
                async with b.hold(1):
                    pass
            assert e.value.status == 503
        async with b.hold(5), b.hold(5):
            assert b.used == 30

    asyncio.run(run())


def test_session_policy() -> None:
    p = SessionPolicy(limit=1, dedicated_allowed=False)
    body = {"mode": "dedicated"}
    assert p.check_new(body) == {"mode_requested": "dedicated", "mode": "batch"}
    assert body["mode"] == "batch"
    p.opened("s1")
    with pytest.raises(PolicyError):
        p.check_new({})
    p.closed("s1")
    assert p.check_new({"mode": "batch"}) == {}
    p.check_patch({"accepting_jobs": False, "max_ttl": 5})
    for bad in ({"backend": "x"}, {"accepting_jobs": "no"}):
        with pytest.raises(PolicyError):
            p.check_patch(bad)


def test_bound_and_cap(tmp_path: Path) -> None:
    cut = bound("/" + "%01" * 3000)
    assert len(cut) < 320 and "9001 chars, sha256:" in cut
    log = AuditLog(tmp_path / "a.jsonl", key=b"k" * 64, max_bytes=2000, job_id="1")
    log.record("start", **log.chain_fields())
    with pytest.raises(AuditUnavailable):
        for i in range(100):
            log.record("request", path=f"/{i}")
    assert log.full and log.available() is not None
    log.record("summary", requests=i)  # framing records use the reserve
    log.close()
    events = [line.split(b'"event":"')[1].split(b'"')[0]
              for line in (tmp_path / "a.jsonl").read_bytes().splitlines()]
    assert events.count(b"audit_full") == 1 and events[-2:] == [b"summary", b"close"]
    assert verify(tmp_path / "a.jsonl", key=b"k" * 64)[0]
    assert not verify(tmp_path / "a.jsonl", key=b"j" * 64)[0]


def test_the_job_sees_only_its_own_tags() -> None:
    """Ours are the proxy's business (issue 25): a job document shows what the job set."""
    from qproxy.proxy.policy.tags import hide

    doc = {"id": "j", "tags": ["mine", "slurm_job:7", "slurm_user:alice", "slurm_account:a"]}
    assert hide(doc)["tags"] == ["mine"]
    assert hide({"id": "j"}) == {"id": "j"} and hide(None) is None
