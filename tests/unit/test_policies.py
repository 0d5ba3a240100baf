"""Unit tests of the pure policy units (no sockets)."""

from __future__ import annotations

import asyncio
import time

import pytest

from qproxy.proxy.auth import JobAuth, new_job_token
from qproxy.proxy.policy.backend import BackendPolicy
from qproxy.proxy.policy.errors import PolicyError
from qproxy.proxy.policy.isolation import Ownership, is_final
from qproxy.proxy.policy.lanes import LaneGate
from qproxy.proxy.policy.tags import enforced_tags, merge_tags
from qproxy.proxy.policy.timelimit import TimeLimit


def test_backend_maps_both_ways_and_refuses_others() -> None:
    b = BackendPolicy("ibm_fez", "fake_fez")
    assert b.to_upstream("ibm_fez") == "fake_fez"
    for other in ("fake_fez", "ibm_torino", None, 3):
        with pytest.raises(PolicyError) as e:
            b.to_upstream(other)
        assert e.value.status == 403 and "ibm_fez" in e.value.message
    devs = {"devices": [{"name": "fake_fez", "class": "x"}, {"name": "fake_torino"}]}
    assert b.filter_devices(devs) == {"devices": [{"name": "ibm_fez", "class": "x"}]}
    assert b.rewrite_doc({"backend_name": "fake_fez"}) == {"backend_name": "ibm_fez"}
    assert b.rewrite_job({"backend": "fake_fez", "id": "j"})["backend"] == "ibm_fez"
    assert b.rewrite_job({"backend_name": "other"})["backend_name"] == "other"


def test_timelimit_clamps_and_refuses() -> None:
    now = [1000.0]
    t = TimeLimit(1100.0, clock=lambda: now[0])
    body: dict = {"cost": 500}
    t.rewrite_job(body)
    assert body["cost"] == 100
    body = {"cost": 30}
    t.rewrite_job(body)
    assert body["cost"] == 30
    body = {}
    t.rewrite_job(body)
    assert body["cost"] == 100
    body = {"cost": 10, "start_session": True, "session_time": 9999}
    t.rewrite_job(body)
    assert body["session_time"] == 100
    body = {"max_ttl": 28800}
    t.rewrite_session(body)
    assert body["max_ttl"] == 100
    now[0] = 1100.5
    with pytest.raises(PolicyError) as e:
        t.rewrite_job({"cost": 1})
    assert e.value.status == 403 and "time limit" in e.value.message


def test_tags_enforced_not_forgeable() -> None:
    enf = enforced_tags("42", "alice", "proj")
    assert enf == ["slurm_job:42", "slurm_user:alice", "slurm_account:proj"]
    merged = merge_tags(["mine", "slurm_job:7", "mine", 5], enf)
    assert merged == ["mine", *enf]
    assert merge_tags(None, enf) == enf


def test_isolation() -> None:
    o = Ownership()
    o.add_job("a")
    o.add_session("s")
    o.check_job("a")
    o.check_session("s")
    with pytest.raises(PolicyError) as e:
        o.check_job("b")
    assert e.value.status == 404
    with pytest.raises(PolicyError):
        o.check_session("a")
    assert o.filter_workloads({"workloads": [{"id": "a"}, {"id": "x"}, {"id": "s"}]}) == {
        "workloads": [{"id": "a"}, {"id": "s"}]
    }
    assert is_final("Completed") and is_final("CANCELLED") and not is_final("Running")


async def test_lanes_wait_then_free() -> None:
    g = LaneGate(2, "wait", 5.0)
    await g.reserve()
    await g.commit("j1")
    await g.reserve()
    await g.commit("j2")
    waiter = asyncio.create_task(g.reserve())
    await asyncio.sleep(0.05)
    assert not waiter.done() and g.in_use == 2
    await g.finished("j1")
    await asyncio.wait_for(waiter, 1)
    assert g.in_use == 2


async def test_lanes_refuse_and_timeout() -> None:
    g = LaneGate(1, "refuse")
    await g.reserve()
    with pytest.raises(PolicyError) as e:
        await g.reserve()
    assert e.value.status == 429
    await g.cancel_reservation()
    assert g.in_use == 0
    w = LaneGate(1, "wait", 0.1)
    await w.reserve()
    with pytest.raises(PolicyError) as e:
        await w.reserve()
    assert e.value.status == 429 and "waited" in e.value.message


def test_job_auth() -> None:
    tok = new_job_token()
    assert len(tok) >= 43
    now = [1000.0]
    a = JobAuth(tok, "1", 60, clock=lambda: now[0])
    assert a.check_header(f"apikey {tok}") is None
    assert a.check_header("apikey nope") is not None
    assert a.check_header(None) is not None
    jwt_token, exp = a.mint()
    assert exp == 1060
    # pyjwt checks exp against the real clock: a token minted "in 1970" is expired.
    assert "expired" in (a.check_header(f"Bearer {jwt_token}") or "")
    b = JobAuth(tok, "1", 60)
    good, _ = b.mint()
    assert b.check_header(f"Bearer {good}") is None
    assert b.check_header(f"Bearer {good}x") == "invalid access token"
    assert JobAuth(tok, "1", 60).check_header(f"Bearer {good}") == "invalid access token"


def test_verified_jwt_is_remembered_only_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    import qproxy.proxy.auth as auth

    now = [time.time()]
    monkeypatch.setattr(auth.time, "time", lambda: now[0])
    a = JobAuth(new_job_token(), "1", 60, clock=lambda: now[0])
    token, exp = a.mint()
    assert a.check_jwt(token) is None and a.check_jwt(token) is None  # the second: remembered
    assert a.check_jwt(token[:-2] + "AA") == "invalid access token"  # not a prefix match
    now[0] = exp - 0.5
    assert a.check_jwt(token) is None
    now[0] = exp
    assert "expired" in (a.check_jwt(token) or "")
    others = [a.mint()[0] for _ in range(auth.VERIFIED_MAX + 3)]  # bounded: it starts afresh
    assert all(a.check_jwt(t) is None for t in others)
    assert len(a._verified) <= auth.VERIFIED_MAX
