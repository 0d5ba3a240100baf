"""Multi-node jobs without a cluster: which role a node's prolog takes, the AdminComment the
primary publishes and the relays read, nodes/batch_host from real captures, the relay HMAC
and the cluster key. Slurm and the proxies are faked (monkeypatch); runs anywhere."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from qproxy.config import ConfigError, load, port_range
from qproxy.proxy.relay import auth as relay_auth
from qproxy.proxy.relay.auth import (
    check_relay_token,
    format_hostport,
    load_cluster_key,
    node_label,
    parse_hostport,
    relay_token,
    sign_primary,
)
from qproxy.records import ProxyRecord
from qproxy.secrets import SecretsError
from qproxy.slurm import prolog as pl
from qproxy.slurm.state import JobState
from qproxy.slurmcli.admincomment import qpu_comment
from qproxy.slurmcli.record import JobRecord, record_from_json, record_from_text
from qproxy.slurmcli.run import SlurmError

CONF = Path(__file__).resolve().parents[2] / "conf" / "qproxy.toml"
DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"
VERSIONS = sorted(p.name for p in DATA.iterdir() if p.is_dir())


def _config(tmp_path: Path, extra: str = "") -> Any:
    text = CONF.read_text().replace('"/run/qproxy"', f'"{tmp_path / "state"}"')
    text = text.replace('"/var/log/qproxy"', f'"{tmp_path / "audit"}"')
    assert str(tmp_path) in text.split("audit_dir", 1)[1].splitlines()[0]
    if extra:  # replace the shipped value of that key
        key = extra.split("=")[0].strip()
        text = "\n".join(ln for ln in text.splitlines() if not ln.startswith(key + " "))
        text = text.replace("[proxy]\n", f"[proxy]\n{extra}\n", 1)
    (tmp_path / "q.toml").write_text(text)
    return load(tmp_path / "q.toml")


def _info(nodes: str = "vm", batch_host: str = "", lic: int = 2, run: int = 0) -> JobRecord:
    return JobRecord("42", "RUNNING", user="alice", licenses={"ibm_fez": lic},
                     nodes=nodes, batch_host=batch_host, restart_cnt=run)


HOSTS = {"n[1-3]": ["n1", "n2", "n3"], "m2,m1": ["m2", "m1"]}
KEY = b"c" * 32  # the cluster key of FakeSlurm's nodes


def signed(text: str, job_id: str = "42") -> str:
    """``text`` (an AdminComment naming primary= and run=) signed as a primary's prolog
    signs it (issue 24: relays take only a signed address)."""
    c = qpu_comment(text)
    assert c is not None and c.run is not None
    return f"{text} sig={sign_primary(KEY, job_id, c.run, c.primary)}"


@pytest.fixture
def fake_hostnames(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pl, "hostnames", lambda text: HOSTS.get(text, [text] if text else []))


# --------------------------------------------------------------------------- role choice
@pytest.mark.usefixtures("fake_hostnames")
@pytest.mark.parametrize(("nodes", "batch", "me", "role", "first"), [
    ("vm", "vm", "vm", "single", "vm"),
    ("", "", "vm", "single", "vm"),  # no node list yet: as today
    ("n[1-3]", "n1", "n1", "primary", "n1"),
    ("n[1-3]", "n1", "n3", "relay", "n1"),
    ("n[1-3]", "n2", "n2", "primary", "n2"),  # the batch host wins over the list's order
    ("n[1-3]", "n2", "n1", "relay", "n2"),
    ("n[1-3]", "", "n1", "primary", "n1"),  # no batch host (salloc): the first node
    ("n[1-3]", "login1", "n1", "primary", "n1"),  # a batch host outside the list: ignored
    ("m2,m1", "", "m1", "relay", "m2"),
])
def test_role_of(nodes: str, batch: str, me: str, role: str, first: str) -> None:
    assert pl.role_of(_info(nodes, batch), me) == (role, first)


@pytest.mark.usefixtures("fake_hostnames")
def test_role_of_unknown_node() -> None:
    with pytest.raises(pl.JobRefused, match="not among the job's nodes"):
        pl.role_of(_info("n[1-3]", "n1"), "somehost")


def test_this_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURMD_NODENAME", "envnode")
    assert pl.this_node("given") == "given"
    assert pl.this_node(None) == "envnode"
    monkeypatch.delenv("SLURMD_NODENAME")
    monkeypatch.setattr(pl.socket, "gethostname", lambda: "hostname")
    assert pl.this_node(None) == "hostname"


# --------------------------------------------------------------------------- AdminComment
@pytest.mark.parametrize(("text", "expected"), [
    ("qpu backend=ibm_fez lanes=2", ("ibm_fez", 2, "", None)),
    ("qpu backend=ibm_fez lanes=2 primary=10.0.0.5:612 run=0", ("ibm_fez", 2, "10.0.0.5:612", 0)),
    ("qpu backend=ibm_fez lanes=1 primary=failed run=3", ("ibm_fez", 1, "failed", 3)),
    ("qpu backend=b lanes=4 primary=[fd00::5]:700 run=1", ("b", 4, "[fd00::5]:700", 1)),
])
def test_qpu_comment(text: str, expected: tuple[Any, ...]) -> None:
    c = qpu_comment(text)
    assert c is not None and (c.backend, c.lanes, c.primary, c.run) == expected


@pytest.mark.parametrize("text", ["", "qpu backend=x", "something else", "qpu lanes=2"])
def test_qpu_comment_other(text: str) -> None:
    assert qpu_comment(text) is None


def test_admin_comment_from_scontrol_text() -> None:
    """``scontrol -o`` prints the comment's spaces unquoted, then the next field."""
    line = ("JobId=42 JobName=x UserId=alice(1001) JobState=RUNNING Restarts=2 "
            "NodeList=n[1-3] BatchHost=n1 "
            "AdminComment=qpu backend=ibm_fez lanes=2 primary=10.0.0.5:612 run=2 Power= x=y")
    rec = record_from_text("42", line)
    assert rec.admin_comment == "qpu backend=ibm_fez lanes=2 primary=10.0.0.5:612 run=2"
    assert (rec.nodes, rec.batch_host, rec.restart_cnt) == ("n[1-3]", "n1", 2)
    # the slurm-mode guard's old pattern still matches (it only reads the prefix)
    assert rec.admin_comment.startswith("qpu backend=ibm_fez lanes=2")


# --------------------------------------------------------------------------- captures
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("job", ["running-lic", "running-gres"])
def test_nodes_from_captures(version: str, job: str) -> None:
    doc = json.loads((DATA / version / f"squeue-json-jobs-{job}.json").read_text())
    rec = record_from_json(doc["jobs"][0], "squeue")
    assert (rec.nodes, rec.batch_host, rec.restart_cnt) == ("vm", "vm", 0), version
    text = (DATA / version / f"scontrol-o-show-job-{job}.txt").read_text().splitlines()[0]
    trec = record_from_text(rec.job_id, text)
    assert (trec.nodes, trec.batch_host, trec.restart_cnt) == ("vm", "vm", 0), version


def test_nodes_json_shapes() -> None:
    """22.05 and 24.11+ both give nodes/batch_host as strings; restart_cnt is an int (and
    would be a number object where a version wraps it)."""
    j2205 = {"job_id": 5, "job_state": "RUNNING", "nodes": "n[1-3]", "batch_host": "n1",
             "restart_cnt": 1}
    j2411 = {"job_id": 5, "job_state": ["RUNNING"], "nodes": "n[1-3]", "batch_host": "n1",
             "restart_cnt": {"set": True, "infinite": False, "number": 1}}
    for j in (j2205, j2411):
        rec = record_from_json(j)
        assert (rec.nodes, rec.batch_host, rec.restart_cnt) == ("n[1-3]", "n1", 1)
    pending = record_from_json({"job_id": 6, "job_state": "PENDING", "nodes": "",
                                "batch_host": None})
    assert (pending.nodes, pending.batch_host) == ("", "")


# --------------------------------------------------------------------------- prolog flows
class FakeSlurm:
    """What the prolog asks Slurm and what it starts, recorded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, info: JobRecord, me: str) -> None:
        self.info = info
        self.comments: list[str] = []  # what the primary published
        self.shown: list[str] = []  # what `scontrol -o show job` answers, in turn
        self.started: list[list[str]] = []
        monkeypatch.setattr(pl, "_job_info", lambda job_id: info)
        monkeypatch.setattr(pl, "hostnames", lambda text: HOSTS.get(text, [text]))
        monkeypatch.setattr(pl, "node_addr", lambda name: f"10.0.0.{name[-1]}")
        monkeypatch.setattr(pl, "set_admin_comment",
                            lambda job_id, text: self.comments.append(text) or True)
        monkeypatch.setattr(pl, "start_admin_comment", lambda job_id, text: None)
        monkeypatch.setattr(pl, "finish_admin_comment", lambda job_id, proc: True)
        monkeypatch.setattr(pl, "admin_comment_of", self._show)
        monkeypatch.setattr(relay_auth, "load_cluster_key", lambda path: KEY)
        monkeypatch.setattr(pl.time, "sleep", lambda s: None)
        monkeypatch.setattr(pl, "keep_spares", lambda config: None)
        monkeypatch.setenv("SLURMD_NODENAME", me)

        class Proc:
            pid = 4242

        def start(args: list[str], log_path: Path, cgroup_name: str = "") -> Proc:
            self.started.append(args)
            return Proc()

        monkeypatch.setattr(pl.proxyproc, "start", start)

    def _show(self, job_id: str) -> str:
        if not self.shown:
            raise SlurmError("no answer")
        return self.shown.pop(0) if len(self.shown) > 1 else self.shown[0]


def _ready_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None) -> None:
    monkeypatch.setattr(pl.proxyproc, "wait_ready", lambda *a, **k: env)


def test_prolog_primary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path)
    fake = FakeSlurm(monkeypatch, _info("n[1-3]", "n1", lic=2, run=1), "n1")
    monkeypatch.setattr(pl.spares, "claim", lambda *a: None)
    _ready_env(monkeypatch, {"QISKIT_IBM_URL": "x", "QPROXY_RELAY_PORT": "612"})
    assert pl.prolog(config, "42", os.getuid(), "ibm_fez") == 0
    job = JobState.of(config, "42")
    assert job.read_error() is None
    args = fake.started[0]
    assert args[args.index("--relay-listen") + 1] == "10.0.0.1"
    assert "--relay-to" not in args
    rec = job.read_record()
    assert rec is not None and rec.role == "primary" and rec.lanes == 2
    assert fake.comments == [signed("qpu backend=ibm_fez lanes=2 primary=10.0.0.1:612 run=1")]
    assert args[args.index("--run") + 1] == "1"
    assert pl.lease.held(config).get("ibm_fez", {}) == {"42": 2}


def test_prolog_primary_without_relay_port(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path)
    fake = FakeSlurm(monkeypatch, _info("n[1-3]", "n1"), "n1")
    monkeypatch.setattr(pl.spares, "claim", lambda *a: None)
    _ready_env(monkeypatch, None)  # the proxy died at start
    pl.prolog(config, "42", os.getuid(), "ibm_fez")
    assert fake.comments == [signed("qpu backend=ibm_fez lanes=2 primary=failed run=0")]


def test_prolog_primary_refused_tells_the_relays(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path)
    fake = FakeSlurm(monkeypatch, _info("n[1-3]", "n1"), "n1")

    def busy(*a: Any) -> None:
        raise pl.JobRefused("all lanes busy")

    monkeypatch.setattr(pl, "acquire_lanes", busy)
    pl.prolog(config, "42", os.getuid(), "ibm_fez")
    assert JobState.of(config, "42").read_error() == "all lanes busy"
    assert fake.comments == [signed("qpu backend=ibm_fez lanes=2 primary=failed run=0")]
    assert fake.started == []


def test_prolog_relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path)
    fake = FakeSlurm(monkeypatch, _info("n[1-3]", "n1", run=1), "n3")
    fake.shown = ["qpu backend=ibm_fez lanes=2",  # the primary has not published yet
                  signed("qpu backend=ibm_fez lanes=2 primary=10.0.0.1:600 run=0"),  # last run's
                  signed("qpu backend=ibm_fez lanes=2 primary=10.0.0.1:612 run=1")]
    assert pl.prolog(config, "42", os.getuid(), "ibm_fez") == 0
    job = JobState.of(config, "42")
    assert job.read_error() is None
    args = fake.started[0]
    assert args[:2] == ["--relay-to", "10.0.0.1:612"]
    assert args[args.index("--node") + 1] == "n3"
    assert args[args.index("--run") + 1] == "1"
    assert "--relay-listen" not in args and "--ledger-file" not in args
    rec = job.read_record()
    assert isinstance(rec, ProxyRecord)
    assert (rec.role, rec.primary, rec.pid, rec.lanes) == ("relay", "10.0.0.1:612", 4242, 2)
    assert rec.node == "n3"
    # its own audit chain: nodes may share an audit_dir, and a chain has one writer
    assert args[args.index("--audit-log") + 1] == str(config.audit_dir / "job-42.relay-n3.jsonl")
    assert fake.comments == []  # a relay never touches AdminComment
    assert pl.lease.held(config).get("ibm_fez", {}) == {}  # nor the lanes


def test_prolog_relay_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path, "relay_wait_seconds = 0.01")
    fake = FakeSlurm(monkeypatch, _info("n[1-3]", "n1"), "n2")
    fake.shown = ["qpu backend=ibm_fez lanes=2"]
    pl.prolog(config, "42", os.getuid(), "ibm_fez")
    job = JobState.of(config, "42")
    error = job.read_error()
    assert error and "first node (n1) did not publish its address" in error
    assert fake.started == [] and job.read_record() is None


def test_prolog_relay_primary_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path)
    fake = FakeSlurm(monkeypatch, _info("n[1-3]", "n1"), "n2")
    fake.shown = [signed("qpu backend=ibm_fez lanes=2 primary=failed run=0")]
    pl.prolog(config, "42", os.getuid(), "ibm_fez")
    error = JobState.of(config, "42").read_error()
    assert error and "could not start" in error and fake.started == []


def test_prolog_relay_refused_like_the_primary(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Every node checks the request the same way: no node waits for a refused job."""
    config = _config(tmp_path)
    fake = FakeSlurm(monkeypatch, _info("n[1-3]", "n1", lic=0), "n2")
    pl.prolog(config, "42", os.getuid(), "ibm_fez")
    error = JobState.of(config, "42").read_error()
    assert error and "needs QPU lanes" in error and fake.started == []


def test_epilog_of_a_relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ledger cleanup (the ledger is the primary's), its own audit file, role in usage."""
    from qproxy.slurm import epilog

    config = _config(tmp_path)
    job = JobState.of(config, "42")
    job.create()
    job.write_record(ProxyRecord(job_id="42", pid=999999, resource="ibm_fez", lanes=2,
                                 role="relay", primary="10.0.0.1:612", node="n3"))
    job.proxy_log.write_text("relay log\n")

    def no_cleanup(*a: Any) -> Any:
        raise AssertionError("a relay node has no ledger to clean up")

    monkeypatch.setattr(epilog, "_leftovers", no_cleanup)
    usage = epilog.finish(config, "42", "epilog")
    assert usage.role == "relay" and usage.upstream_jobs == 0 and usage.proxy == "absent"
    assert (config.audit_dir / "job-42.relay-n3.jsonl").exists()
    assert (config.audit_dir / "job-42.relay-n3.proxy.log").read_text() == "relay log\n"
    assert not (config.audit_dir / "job-42.jsonl").exists()
    line = json.loads((config.audit_dir / "usage.jsonl").read_text())
    assert line["role"] == "relay"


# --------------------------------------------------------------------------- HMAC, key, ports
def test_relay_token() -> None:
    key = b"k" * 32
    t = relay_token(key, "42")
    assert len(t) == 64 and int(t, 16) >= 0
    assert t == relay_token(key, "42")
    assert t != relay_token(key, "43") and t != relay_token(b"j" * 32, "42")
    assert check_relay_token(key, "42", t) and check_relay_token(key, "42", t.upper())
    for bad in (None, "", "0" * 64, relay_token(key, "43"), t[:-1]):
        assert not check_relay_token(key, "42", bad)
    # the documented construction, so other tools can compute it
    import hashlib
    import hmac
    assert t == hmac.new(key, b"qproxy-relay:42", hashlib.sha256).hexdigest()


def test_cluster_key_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    with pytest.raises(SecretsError, match="cannot read"):
        load_cluster_key(path)
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    assert load_cluster_key(path) == path.read_bytes()
    for mode in (0o640, 0o604, 0o660):
        path.chmod(mode)
        with pytest.raises(SecretsError, match="group/other"):
            load_cluster_key(path)
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    path.write_bytes(b"short\n")
    with pytest.raises(SecretsError, match="fewer than"):
        load_cluster_key(path)


def test_hostport_and_node_label() -> None:
    assert parse_hostport("10.0.0.1:612") == ("10.0.0.1", 612)
    assert parse_hostport("[fd00::1]:700") == ("fd00::1", 700)
    assert format_hostport("fd00::1", 700) == "[fd00::1]:700"
    for bad in ("failed", "10.0.0.1", ":612", "h:0", "h:99999", "a b:1", "fd00::1:700"):
        assert parse_hostport(bad) is None, bad
    assert node_label("n-1.cluster_a") == "n-1.cluster_a"
    assert node_label("bad name\n") == "?" and node_label(None) == "?"


def test_relay_ports_setting(tmp_path: Path) -> None:
    assert port_range("600-1023") == (600, 1023) and port_range(" 900 - 999 ") == (900, 999)
    for bad in ("600", "0-10", "1000-1024", "700-600", "x-y", "2000-3000"):
        assert port_range(bad) is None, bad
    assert _config(tmp_path).proxy.relay_ports == "600-1023"
    assert _config(tmp_path).cluster_key_file == Path("/etc/qproxy/cluster.key")
    with pytest.raises(ConfigError, match="relay_ports must be"):
        _config(tmp_path, 'relay_ports = "1024-2000"')


# --------------------------------------------------------------------------- issue 24 items 3, 4
FORGED = "qpu backend=ibm_fez lanes=1 primary=10.6.6.6:612 run=1"


@pytest.mark.parametrize("shown", [
    [FORGED],  # unsigned: what a job name could carry
    [f"{FORGED} sig={'0' * 32}"],
    [f"{FORGED} sig={sign_primary(b'x' * 32, '42', 1, '10.6.6.6:612')}"],  # another key
    [signed(FORGED, job_id="43")],  # signed for another job
    [signed("qpu backend=ibm_fez lanes=1 primary=10.6.6.6:612 run=0")],  # another run's
])
def test_prolog_relay_ignores_an_unsigned_primary(tmp_path: Path, shown: list[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path, "relay_wait_seconds = 0.01")
    fake = FakeSlurm(monkeypatch, _info("n[1-3]", "n1", run=1), "n2")
    fake.shown = shown
    pl.prolog(config, "42", os.getuid(), "ibm_fez")
    error = JobState.of(config, "42").read_error()
    assert error and "did not publish its address" in error and fake.started == []


def test_prolog_relay_refuses_a_primary_off_the_first_node(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even signed (a key leak, a bug), ADDR must be the first node's NodeAddr (10.0.0.1)."""
    config = _config(tmp_path)
    fake = FakeSlurm(monkeypatch, _info("n[1-3]", "n1", run=1), "n2")
    fake.shown = [signed(FORGED)]
    pl.prolog(config, "42", os.getuid(), "ibm_fez")
    error = JobState.of(config, "42").read_error()
    assert error and "not on this job's first node (n1, 10.0.0.1)" in error
    assert fake.started == []


def test_prolog_relay_reads_admin_comment_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """The job's name is the user's: in ``scontrol -o`` text a forged AdminComment in it comes
    first (the text parser found it); in squeue's JSON it is only the name."""
    doc = json.loads((DATA / "22.05.8" / "squeue-json-jobs-running-lic.json").read_text())
    job = {**doc["jobs"][0], "name": f"x AdminComment={FORGED}", "admin_comment": ""}
    monkeypatch.setattr(pl, "job_info", lambda job_id: record_from_json(job, "squeue"))
    assert pl.admin_comment_of("42") == ""
    line = f"JobId=42 JobName=x AdminComment={FORGED} UserId=alice(1001) AdminComment= x=y"
    assert record_from_text("42", line).admin_comment.startswith(FORGED)  # why not text


def test_relay_request_signature() -> None:
    """Per request: time window, run, nonce once, method/target/length/node bound."""
    from qproxy.proxy.relay.auth import RequestChecker, sign_request

    key, now = b"k" * 32, 1_800_000_000.0
    c = RequestChecker(key, "42", 2, clock=lambda: now)

    def sig(**kw: Any) -> str:
        args = {"method": "POST", "target": "/api/v1/jobs?x=1", "length": 120, "node": "n2",
                "run": 2, "job_id": "42", "now": now, **kw}
        return sign_request(key, args.pop("job_id"), args.pop("run"), args.pop("method"),
                            args.pop("target"), args.pop("length"), args.pop("node"), **args)

    def check(value: str, method: str = "POST", target: str = "/api/v1/jobs?x=1",
              length: int | None = 120, node: str = "n2") -> str | None:
        return c.check(value, method, target, length, node)

    good = sig()
    assert check(good) is None
    assert check(good) == "replayed relay request"
    for value, why in ((sig(run=1), "another run"), (sig(now=now - 31), "time window"),
                       (sig(now=now + 31), "time window"), (sig(job_id="43"), "bad"),
                       ("", "missing"), ("v2 ts=1 run=2", "malformed"),
                       (relay_token(key, "42"), "malformed")):
        assert why in (check(value) or ""), (value, check(value))
    for kw in ({"method": "DELETE"}, {"target": "/api/v1/jobs?x=2"}, {"length": 121},
               {"length": None}, {"node": "n3"}):
        assert check(sig(), **kw) == "bad relay signature", kw  # type: ignore[arg-type]
    assert check(sig(length=None), length=0) is None  # no body, however it is spelt
    # nonces are remembered for the window only
    later = RequestChecker(key, "42", 2, clock=lambda: now)
    assert later.check(good, "POST", "/api/v1/jobs?x=1", 120, "n2") is None
    later.clock = lambda: now + 100
    assert later.check(sig(now=now + 100), "POST", "/api/v1/jobs?x=1", 120, "n2") is None
    assert len(later.seen) == 1
