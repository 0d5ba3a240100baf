"""Issue 24 item 6: the audit space as a node-wide single point of failure, attacked as the
issue describes, with the job's code run as an unprivileged user (uid 65534,
tests/support/attacker.py ``authflood``) against real `qproxy serve` processes that share
one node's state_dir and audit_dir, in front of the session's emulator.

Before: a job's own authenticated 404s with long paths wrote ~1.9 KB each (the 64 MiB cap in
~10 s), and the cap was per job only, so one user's job array filled the audit filesystem and
every job on the node got 503. Every loop is bounded by count and by time."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from . import hostile
from .conftest import Proxy, read_env_file, write_config
from .test_hostile import api_error, bearer

pytestmark = pytest.mark.timeout(300)


class Node:
    """One node's config, state_dir and audit_dir; a proxy per job on it."""

    def __init__(self, emulator: Any, d: Path, proxy_extra: str) -> None:
        self.emulator, self.dir = emulator, d
        self.conf = write_config(emulator, d, proxy_extra)
        self.started: list[Proxy] = []

    def job(self, job_id: str, user: str) -> Proxy:
        jd = self.dir / f"job{job_id}"
        jd.mkdir(parents=True)
        env_file = jd / "env"
        proc = subprocess.Popen(
            [sys.executable, "-m", "qproxy", "serve", "--config", str(self.conf), "--job-id",
             job_id, "--user", user, "--backend", "ibm_fez", "--lanes", "1", "--end-time",
             str(time.time() + 3600), "--env-file", str(env_file)],
            stdout=(jd / "stdout").open("wb"), stderr=(jd / "stderr").open("wb"),
            stdin=subprocess.DEVNULL)
        p = Proxy(proc, jd, env_file, self.dir / "audit" / f"job-{job_id}.jsonl",
                  jd / "ledger.jsonl", jd / "summary.json", self.conf)
        self.started.append(p)
        deadline = time.monotonic() + 30
        while not env_file.exists():  # the proxy writes it once it listens
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("proxy did not start: " + p.output())
            time.sleep(0.05)
        p.env = read_env_file(env_file)
        return p

    def stop(self) -> None:
        for p in self.started:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()


@pytest.fixture
def node(emulator: Any, tmp_path: Path) -> Iterator[Any]:
    nodes: list[Node] = []

    def make(proxy_extra: str = "", d: Path | None = None) -> Node:
        n = Node(emulator, d or tmp_path / "node", proxy_extra)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.stop()


def _port(p: Proxy) -> int:
    return int(p.root.rsplit(":", 1)[1])


def _own_flood(p: Proxy, n: int, kind: str, seconds: float = 60) -> dict[str, Any]:
    """The job's own code, as an unprivileged user, with the job's token."""
    return hostile.attacker_result(
        hostile.attacker("authflood", str(_port(p)), p.token, str(n), str(seconds), kind),
        seconds + 60)["authflood"]


def _records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def _verify(p: Proxy) -> None:
    v = subprocess.run([sys.executable, "-m", "qproxy", "audit", "verify", str(p.audit_log),
                        "--summary", str(p.summary), "--config", str(p.config)],
                       capture_output=True, text=True)
    assert v.returncode == 0 and "HMAC" in v.stdout, v.stdout + v.stderr


def test_own_404s_with_long_paths_are_one_record_and_a_count(node: Any) -> None:
    """2,000 authenticated GETs of jobs with ever new 8 KB ids (404 each): the first record
    in full, then counted, one `repeated` record per window; < 50 audit bytes a request
    amortised (it was ~1.9 KB each); `qproxy audit verify` passes."""
    p = node("audit_repeat_seconds = 5").job("8601", "mallory")
    bearer(p)  # served (the emulator may still be warming up)
    before = p.audit_log.stat().st_size
    got = _own_flood(p, 2000, "404")
    grew = p.audit_log.stat().st_size - before
    sent = got["sent"]
    print(f"{sent} authenticated 404s with 8 KB paths in {got['seconds']} s -> {grew} audit "
          f"bytes while running ({grew / sent:.1f} B/request)")
    assert got["statuses"] == {"404": sent} and sent == 2000, got
    assert p.stop() == 0
    total = p.audit_log.stat().st_size - before
    print(f"with the final repeated/summary/close records: {total / sent:.1f} B/request")
    assert total / sent < 50, (total, sent)
    recs = _records(p.audit_log)
    requests_ = [r for r in recs if r["event"] == "request" and r["status"] == 404]
    repeated = [r for r in recs if r["event"] == "repeated"]
    assert len(requests_) + sum(r["count"] for r in repeated) == sent
    assert {r["shape"] for r in repeated} == {"404 GET /api/v1/jobs/{id}"}
    assert all("sha256:" in r["last"]["path"] for r in repeated)
    _verify(p)


def test_a_users_job_array_cannot_take_the_audit_space_of_others(node: Any,
                                                                  tmp_path: Path) -> None:
    """mallory's job array on a node whose audit filesystem has 192 KiB: each of her four
    short jobs writes authenticated requests until its proxy refuses (503). They stop at
    her 64 KiB share of the node's audit space; alice's job, started after them, is served
    and audited. Before, each of mallory's jobs could write its own 64 KiB cap, the disk
    filled, and alice's job got 503 ("No space left on device")."""
    d = tmp_path / "node"
    audit = d / "audit"
    audit.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(audit)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        n = node("audit_max_bytes = 65536\naudit_user_max_bytes = 65536\n"
                 "audit_node_max_bytes = 180000", d)
        written = []
        for k in range(4):
            p = n.job(f"870{k}", "mallory")
            if k == 0:
                bearer(p)  # served (the emulator may still be warming up)
            got = _own_flood(p, 400, "ok")
            print(f"mallory's job {k}: {got['statuses']}; {got['refused_message'][:100]}")
            # refused at its 4th 503, or already at the token exchange
            assert got["statuses"].get("503", 0) == 4 or got["sent"] == 0, got
            assert "refuses work it cannot audit" in got["refused_message"]
            assert p.stop() == 0
            written.append(p.audit_log.stat().st_size)
            _verify(p)
        assert "audit space of user mallory" in got["refused_message"]
        print(f"mallory's logs: {written} = {sum(written)} bytes")
        assert sum(written) <= 65536 + 4 * 4096, written  # + each log's framing records
        alice = n.job("8710", "alice")
        h = bearer(alice)
        for _ in range(20):
            assert requests.get(alice.api + "/jobs", headers=h, timeout=30).status_code == 200
        assert alice.stop() == 0
        recs = _records(alice.audit_log)
        assert len([r for r in recs if r["event"] == "request"]) == 21  # + the exchange
        _verify(alice)
        ledger = orjson.loads((d / "state" / "audit-budget" / "ledger.json").read_bytes())
        sizes = {"mallory": sum(written), "alice": alice.audit_log.stat().st_size}
        assert {u: ledger["users"][u] for u in sizes} == sizes, ledger
        assert ledger["writers"] == {}, ledger
    finally:
        subprocess.run(["umount", "-l", str(audit)], check=False)


def test_budget_refusal_is_a_clear_503_for_that_user_only(node: Any) -> None:
    """Three jobs at once: mallory's second job, over her share once her first reached its
    own cap, gets the API's 503 naming her share (her requests without a token still their
    401); alice's job goes on."""
    n = node("audit_max_bytes = 30000\naudit_user_max_bytes = 40000\n"
             "audit_node_max_bytes = 100000")
    m1, m2, a = n.job("8801", "mallory"), n.job("8802", "mallory"), n.job("8803", "alice")
    bearer(m1)  # served (the emulator may still be warming up)
    hm, ha = bearer(m2), bearer(a)
    assert "size limit of 30000" in _own_flood(m1, 400, "ok")["refused_message"]
    got = _own_flood(m2, 400, "ok")
    assert got["statuses"].get("503", 0) == 4 and got["statuses"].get("200", 0) > 5, got
    msg = api_error(requests.get(m2.api + "/jobs", headers=hm, timeout=30), 503,
                    "audit space of user mallory on this node")
    assert "refuses work it cannot audit" in msg
    api_error(requests.get(m2.api + "/jobs", timeout=10), 401)
    assert requests.get(a.api + "/jobs", headers=ha, timeout=30).status_code == 200
    for p in (m1, m2, a):
        assert p.stop() == 0
        _verify(p)
    events = [r["event"] for r in _records(m2.audit_log)]
    assert events.count("audit_budget") == 1 and events[-2:] == ["summary", "close"]
    assert m1.audit_log.stat().st_size + m2.audit_log.stat().st_size <= 40000 + 2 * 4096
