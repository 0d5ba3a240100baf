"""The hooks' parsing and lease logic without a cluster (fast; runs anywhere)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from qproxy.config import load
from qproxy.node.process import is_our_proxy
from qproxy.slurm import lease, proxyproc
from qproxy.slurm.prolog import JobRefused, check
from qproxy.slurmcli.parse import gres_lanes, parse_licenses
from qproxy.slurmcli.record import JobRecord

CONF = Path(__file__).resolve().parents[2] / "conf" / "qproxy.toml"


@pytest.mark.parametrize(("job", "lanes"), [
    ({"gres_detail": ["qpu(CNT:2)"]}, 2),
    ({"gres_detail": ["gpu:a100(CNT:1)", "qpu(CNT:3)"]}, 3),
    ({"tres_per_node": "gres:qpu:1"}, 1),
    ({"tres_per_job": "gres/qpu:4"}, 4),
    ({"tres_per_node": "gres:gpu:2"}, 0),
    ({}, 0),
])
def test_gres_lanes(job: dict[str, object], lanes: int) -> None:
    assert gres_lanes(job) == lanes


def test_parse_licenses() -> None:
    assert parse_licenses("ibm_fez:2,ibm_torino:1") == {"ibm_fez": 2, "ibm_torino": 1}
    assert parse_licenses("ibm_fez") == {"ibm_fez": 1}
    assert parse_licenses("") == {}


def _info(gres: int = 0, lic: dict[str, int] | None = None, account: str = "") -> JobRecord:
    return JobRecord("1", "RUNNING", user="alice", account=account, gres_qpu=gres,
                     licenses=lic or {})


def test_check(tmp_path: Path) -> None:
    config = load(CONF)
    assert check(config, "ibm_fez", "alice", _info(gres=2))[1] == 2
    assert check(config, "ibm_fez", "alice", _info(gres=1, lic={"ibm_fez": 2}))[1] == 2
    for backend, info, msg in [
        ("nope", _info(gres=1), "unknown QPU backend 'nope'"),
        ("ibm_torino", _info(gres=2), "which has only 1"),
        ("ibm_fez", _info(lic={"ibm_torino": 1}), "-L ibm_fez:N"),
    ]:
        with pytest.raises(JobRefused, match=msg):
            check(config, backend, "alice", info)


def test_lease(tmp_path: Path) -> None:
    text = CONF.read_text().replace('"/run/qproxy"', f'"{tmp_path}"')
    (tmp_path / "q.toml").write_text(text)
    config = load(tmp_path / "q.toml")
    fez = config.resources["ibm_fez"]
    for job in ("1", "2"):
        (tmp_path / job).mkdir()
        lease.acquire(config, fez, job, 1)
    with pytest.raises(lease.LanesBusy, match="2 of its 2 lanes"):
        lease.acquire(config, fez, "3", 1)
    lease.release(config, "1")
    (tmp_path / "3").mkdir()
    lease.acquire(config, fez, "3", 1)
    (tmp_path / "2").rmdir()  # job 2's state was reaped: its lease is stale
    (tmp_path / "4").mkdir()
    lease.acquire(config, fez, "4", 1)
    assert lease.held(config)["ibm_fez"] == {"3": 1, "4": 1}


def _fake_proxy(job_id: str, ignore_term: bool = False) -> subprocess.Popen[bytes]:
    """A process whose command line looks like `... serve --job-id <id>`."""
    code = "import signal, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print('up', flush=True)\ntime.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--job-id", job_id],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    return proc


def test_proxy_stop() -> None:
    p = _fake_proxy("41")
    try:
        assert proxyproc.stop(p.pid, "42") == "absent"  # not that job's proxy: untouched
        assert p.poll() is None
        t0 = time.monotonic()
        assert proxyproc.stop(p.pid, "41") == "terminated"
        assert time.monotonic() - t0 < 2
        p.wait(5)
        stubborn = _fake_proxy("43", ignore_term=True)
        assert proxyproc.stop(stubborn.pid, "43", grace=0.3) == "killed"
        stubborn.wait(5)
        assert proxyproc.stop(stubborn.pid, "43") == "absent"
    finally:
        p.kill()


def test_wait_ready(tmp_path: Path) -> None:
    env = tmp_path / "proxy.env"
    p = _fake_proxy("44")
    try:
        t0 = time.monotonic()
        assert proxyproc.wait_ready(env, p.pid, "44", 0.2) is None  # alive, never ready
        assert time.monotonic() - t0 >= 0.2
        env.write_text("A=1\nB=x=y\n")
        assert proxyproc.wait_ready(env, p.pid, "44", 5) == {"A": "1", "B": "x=y"}
        env.unlink()
        p.kill()
        p.wait(5)
        t0 = time.monotonic()
        assert proxyproc.wait_ready(env, p.pid, "44", 30) is None  # gone: no waiting
        assert time.monotonic() - t0 < 1
    finally:
        p.kill()


# A pending heterogeneous job as 22.05's squeue --json / scontrol -o print it (captured on the
# local cluster: `sbatch -L ibm_fez:1 --q_backend=ibm_fez : -n1`, fields trimmed).
HET_2205 = [{"job_id": 3, "het_job_id": 3, "het_job_offset": 0, "het_job_id_set": "3-4",
             "licenses": "ibm_fez:1", "job_state": "PENDING"},
            {"job_id": 4, "het_job_id": 3, "het_job_offset": 1, "het_job_id_set": "3-4",
             "licenses": "", "job_state": "PENDING"}]


def test_het_job_id_parsed() -> None:
    from qproxy.slurmcli.record import record_from_json, record_from_text

    assert [record_from_json(j).het_job_id for j in HET_2205] == ["3", "3"]
    assert record_from_json({"job_id": 5, "het_job_id": 0}).het_job_id == ""
    assert record_from_json({"job_id": 5, "het_job_id": {"set": False, "infinite": False,
                                                         "number": 0}}).het_job_id == ""
    line = "JobId=4 HetJobId=3 HetJobOffset=1 JobName=het.sh HetJobIdSet=3-4 Licenses=(null)"
    assert record_from_text("4", line).het_job_id == "3"
    assert record_from_text("5", "JobId=5 JobName=x").het_job_id == ""
    # none of the captured plain jobs of 22.05, 24.11 and 26.05 reads as a component
    import json

    from qproxy.slurmcli.parse import jobs_of

    seen = 0
    for path in (CONF.parents[1] / "tests" / "data" / "slurm").glob("*/*json*.json"):
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            continue  # a capture of an error message
        for job in jobs_of(doc):
            seen += 1
            assert record_from_json(job).het_job_id == "", path
    assert seen > 50, seen


def test_het_component_without_lanes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The classical component of a heterogeneous job gets no QPU and no error; a component
    with lanes, a plain job without lanes, or a het job where no component has lanes are
    unchanged (the last two keep the "needs QPU lanes" refusal)."""
    from qproxy.slurm import prolog, taskenv
    from qproxy.slurm.state import JobState
    from qproxy.slurmcli.record import record_from_json

    comps = [record_from_json(j, "squeue") for j in HET_2205]
    monkeypatch.setattr(prolog, "het_components", lambda het: [c for c in comps
                                                                if c.het_job_id == het])
    note = prolog.het_without_lanes("ibm_fez", comps[1])
    assert note and "component 4 of heterogeneous job 3" in note and "component 3" in note
    assert prolog.het_without_lanes("ibm_fez", comps[0]) is None  # holds the lanes
    assert prolog.het_without_lanes("ibm_fez", _info()) is None  # not a het job
    none = [JobRecord("7", "RUNNING", het_job_id="7"), JobRecord("8", "RUNNING", het_job_id="7")]
    monkeypatch.setattr(prolog, "het_components", lambda het: none)
    assert prolog.het_without_lanes("ibm_fez", none[1]) is None
    # task-env: the prolog's note means "no variables", not a failure; an error still fails
    text = CONF.read_text().replace('"/run/qproxy"', f'"{tmp_path}"')
    (tmp_path / "q.toml").write_text(text)
    config = load(tmp_path / "q.toml")
    JobState.of(config, "4").set_note(note)
    assert taskenv.task_env(config, "4") == dict.fromkeys(taskenv.QPU_ENV_NAMES)
    JobState.of(config, "9").create()
    with pytest.raises(taskenv.NoQPU, match="no QPU proxy was started"):
        taskenv.task_env(config, "9")


def test_reap_plan(tmp_path: Path) -> None:
    """What the reaper would do (and `qproxy status` shows): tear down jobs Slurm no longer
    runs unless their state is too young, release leases without a job, stop a proxy of this
    config whose job has no state; never touch a live job or another config's proxy."""
    import os

    from qproxy.slurm.reap import GRACE_SECONDS, plan

    text = CONF.read_text().replace('"/run/qproxy"', f'"{tmp_path}"')
    (tmp_path / "q.toml").write_text(text)
    config = load(tmp_path / "q.toml")
    for job in ("1", "2", "3"):
        (tmp_path / job).mkdir()
    old = time.time() - 2 * GRACE_SECONDS
    for job in ("1", "2"):
        os.utime(tmp_path / job, (old, old))
    lease.acquire(config, config.resources["ibm_torino"], "9", 1)
    (tmp_path / "9").mkdir()  # acquire drops leases of jobs without state: make it stale after
    lease.acquire(config, config.resources["ibm_fez"], "1", 1)
    (tmp_path / "9").rmdir()
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "serve",
                               "--job-id", job, "--config", cfg])
             for job, cfg in (("7", str(tmp_path / "q.toml")), ("8", "/elsewhere.toml"))]
    try:
        deadline = time.monotonic() + 10
        while not all(is_our_proxy(p.pid, j) for p, j in zip(procs, "78", strict=True)):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        actions = plan(config, live={"2"}, asked=time.time())
        got = {(a.kind, a.job_id, a.pid) for a in actions}
        assert got == {("finish", "1", None), ("keep", "3", None), ("release", "9", None),
                       ("stop", "7", procs[0].pid)}, actions
        got = {(a.kind, a.job_id) for a in plan(config, live={"2", "7"}, asked=time.time())}
        assert ("keep", "7") in got and ("stop", "7") not in got
        assert {a.job_id for a in plan(config, set(), time.time(), everything=True)
                if a.kind == "finish"} == {"1", "2", "3"}
    finally:
        for p in procs:
            p.kill()
            p.wait()
