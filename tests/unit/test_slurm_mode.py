"""Slurm-mode primitives against a fake Slurm CLI: payload, sbatch arguments, the status
state machine, error mapping, the in-flight limit and the deadlock guard, without a cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.primitives import BaseEstimatorV2, BasePrimitiveJob, BaseSamplerV2, StatevectorSampler
from qiskit.quantum_info import SparsePauliOp

from qproxy.client.payload import read_payload
from qproxy.client.qrun import _pubs
from qproxy.client.slurm_mode import (
    DeadlockError,
    InFlightLimitError,
    SlurmEstimator,
    SlurmJobCancelled,
    SlurmJobFailed,
    SlurmJobStatus,
    SlurmJobTimeout,
    SlurmNodeFailure,
    SlurmSampler,
    SlurmSubmitError,
)
from qproxy.client.slurm_mode.job import _in_flight

FAKE = Path(__file__).parents[1] / "support" / "fakeslurm.py"


class FakeSlurm:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def jobs(self) -> dict[str, dict[str, str]]:
        p = self.root / "jobs.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def set(self, job_id: str, **fields: str) -> None:
        jobs = self.jobs
        jobs[job_id].update(fields)
        (self.root / "jobs.json").write_text(json.dumps(jobs))

    def forget(self, job_id: str) -> None:
        jobs = self.jobs
        del jobs[job_id]
        (self.root / "jobs.json").write_text(json.dumps(jobs))

    def calls(self, name: str) -> list[list[str]]:
        p = self.root / "calls.jsonl"
        rows = [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []
        return [r[1:] for r in rows if r[0] == name]

    def extra(self, **kw: object) -> None:
        (self.root / "extra.json").write_text(json.dumps(kw))


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSlurm:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("sbatch", "scontrol", "scancel", "sacct"):
        (bindir / name).write_text(
            f"#!/bin/sh\nFAKE_SLURM_CMD={name} exec {sys.executable} {FAKE} \"$@\"\n")
        (bindir / name).chmod(0o755)
    state = tmp_path / "slurm"
    state.mkdir()
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("QPROXY_SLURM_WORKDIR", str(tmp_path / "work"))
    _in_flight.clear()
    return FakeSlurm(state)


def bell() -> QuantumCircuit:
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return qc


def finish(job, kind: str = "sample") -> None:  # type: ignore[no-untyped-def]
    """Play the job: write the result qrun would write."""
    from qiskit_ibm_runtime.utils.json import RuntimeEncoder

    result = StatevectorSampler(seed=1).run([bell()], shots=10).result()
    (job.jobdir / "result.json").write_text(json.dumps(result, cls=RuntimeEncoder))
    (job.jobdir / "rc").write_text("0\n")


def test_import_needs_no_slurm() -> None:
    code = "import qproxy.client.slurm_mode as m; m.SlurmSampler('x'); m.SlurmEstimator('x')"
    env = dict(os.environ, PATH="/nonexistent")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_types_are_qiskit_primitives(fake: FakeSlurm) -> None:
    assert isinstance(SlurmSampler("ibm_fez"), BaseSamplerV2)
    assert isinstance(SlurmEstimator("ibm_fez"), BaseEstimatorV2)
    job = SlurmSampler("ibm_fez").run([bell()])
    assert isinstance(job, BasePrimitiveJob)


def test_sampler_submits_payload_and_gres(fake: FakeSlurm) -> None:
    s = SlurmSampler("ibm_fez", partition="debug", account="acct", time_limit="5",
                     extra_args=["--comment=x"])
    job = s.run([bell()], shots=123)
    (args,) = fake.calls("sbatch")
    assert "--gres=qpu:1" in args and "--q_backend=ibm_fez" in args
    assert {"--partition=debug", "--account=acct", "--time=5", "--comment=x"} <= set(args)
    doc = read_payload(job.jobdir / "payload.json")
    assert doc["kind"] == "sample" and doc["shots"] == 123
    pubs = _pubs(doc, "sample")  # exactly what qrun will do with it
    assert pubs[0].shots == 123 and pubs[0].circuit.num_qubits == 2
    script = (job.jobdir / "job.sh").read_text()
    # first call of a backend: qrun, then cache the device target (jobmain)
    assert "qproxy.client.slurm_mode.jobmain sample payload.json result.json" in script
    assert job.status() is SlurmJobStatus.PENDING


def test_submit_does_not_inherit_export_settings(fake: FakeSlurm,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A program started with `sbatch --export=ALL,VAR=x` has SLURM_EXPORT_ENV and
    SLURM_GET_USER_ENV=1 in its environment; passed on, every primitive job would wait for
    slurmd to capture the user's login environment. The job still gets the caller's env."""
    monkeypatch.setenv("SLURM_EXPORT_ENV", "ALL,MY_VAR=1")
    monkeypatch.setenv("SLURM_GET_USER_ENV", "1")
    monkeypatch.setenv("MY_VAR", "1")
    SlurmSampler("ibm_fez").run([bell()])
    (args,) = fake.calls("sbatch")
    assert args[:2] == ["--parsable", "--export=ALL"]
    env = json.loads((fake.root / "sbatch_env.json").read_text())
    assert env == {"SLURM_EXPORT_ENV": None, "SLURM_GET_USER_ENV": None, "MY_VAR": "1"}
    SlurmSampler("ibm_fez", extra_args=["--export=NONE"]).run([bell()])
    assert [a for a in fake.calls("sbatch")[1] if a.startswith("--export")] == ["--export=NONE"]


def test_estimator_license_mode(fake: FakeSlurm) -> None:
    qc = QuantumCircuit(2)
    qc.h(0)
    e = SlurmEstimator("ibm_torino", lanes_via="license", options={"resilience_level": 0})
    job = e.run([(qc, [SparsePauliOp("ZZ"), SparsePauliOp("XI")])], precision=0.05)
    (args,) = fake.calls("sbatch")
    assert "--licenses=ibm_torino:1" in args and not any("gres" in a for a in args)
    doc = read_payload(job.jobdir / "payload.json")
    assert doc["precision"] == 0.05 and doc["options"] == {"resilience_level": 0}
    assert _pubs(doc, "estimate")[0].observables.shape == (2,)


def test_invalid_pub_fails_before_submitting(fake: FakeSlurm) -> None:
    from qiskit.circuit import Parameter

    qc = bell()
    qc.rx(Parameter("a"), 0)
    with pytest.raises(ValueError):
        SlurmSampler("ibm_fez").run([qc])  # a parameter without values
    assert fake.calls("sbatch") == []


def test_result_success_and_cleanup(fake: FakeSlurm) -> None:
    job = SlurmSampler("ibm_fez", poll_interval=0.01).run([bell()])
    fake.set(job.job_id(), JobState="RUNNING")
    assert job.running()
    finish(job)
    result = job.result(timeout=10)
    assert sum(result[0].data.meas.get_counts().values()) == 10
    assert job.done() and job.in_final_state()
    assert not job.jobdir.exists()  # keep_files=False
    assert job not in _in_flight


@pytest.mark.parametrize(
    ("state", "exc"),
    [("FAILED", SlurmJobFailed), ("TIMEOUT", SlurmJobTimeout),
     ("NODE_FAIL", SlurmNodeFailure), ("CANCELLED", SlurmJobCancelled),
     ("OUT_OF_MEMORY", SlurmJobFailed)],
)
def test_failures_raise_with_job_id_and_tail(fake: FakeSlurm, state: str, exc: type) -> None:
    job = SlurmSampler("ibm_fez", poll_interval=0.01, slurm_poll_interval=0.05).run([bell()])
    (job.jobdir / "slurm.out").write_text("line1\nqrun: error: sample failed: boom\n")
    fake.set(job.job_id(), JobState=state, ExitCode="1:0")
    with pytest.raises(exc) as info:
        job.result(timeout=10)
    err = info.value
    assert err.job_id == job.job_id() and err.slurm_state == state
    assert "qrun: error: sample failed: boom" in err.output_tail
    assert job.job_id() in str(err) and "boom" in str(err)
    assert job.jobdir.exists()  # kept for debugging
    assert job.in_final_state() and job not in _in_flight


def test_forgotten_job_uses_exit_code_file(fake: FakeSlurm) -> None:
    job = SlurmSampler("ibm_fez", slurm_poll_interval=0.05, poll_interval=0.01).run([bell()])
    (job.jobdir / "rc").write_text("1\n")
    fake.forget(job.job_id())  # MinJobAge passed; sacct has no slurmdbd
    assert job.status() is SlurmJobStatus.FAILED
    with pytest.raises(SlurmJobFailed, match="no longer known"):
        job.result(timeout=5)


def test_cancel_runs_scancel(fake: FakeSlurm) -> None:
    job = SlurmSampler("ibm_fez").run([bell()])
    assert job.cancel() is True
    assert fake.calls("scancel") == [[job.job_id()]]
    assert job.cancelled()
    with pytest.raises(SlurmJobCancelled):
        job.result(timeout=5)


def test_submit_error(fake: FakeSlurm) -> None:
    (fake.root / "sbatch_fail").write_text("sbatch: error: Invalid --q_backend 'nope'")
    with pytest.raises(SlurmSubmitError, match="Invalid --q_backend 'nope'"):
        SlurmSampler("nope").run([bell()])


def test_max_in_flight(fake: FakeSlurm) -> None:
    s = SlurmSampler("ibm_fez", max_in_flight=2, submit_timeout=0.3, slurm_poll_interval=0.05)
    j1 = s.run([bell()])
    s.run([bell()])
    with pytest.raises(InFlightLimitError, match="max_in_flight=2"):
        s.run([bell()])
    assert len(fake.calls("sbatch")) == 2
    fake.set(j1.job_id(), JobState="COMPLETED")
    finish(j1)
    s.run([bell()])  # a slot freed
    assert len(fake.calls("sbatch")) == 3


def _caller(fake: FakeSlurm, monkeypatch: pytest.MonkeyPatch, **fields: str) -> None:
    jobs = fake.jobs
    jobs["7"] = {"JobId": "7", "JobState": "RUNNING", "UserId": f"u({os.getuid()})", **fields}
    (fake.root / "jobs.json").write_text(json.dumps(jobs))
    monkeypatch.setenv("SLURM_JOB_ID", "7")


def test_guard_licence_all_held(fake: FakeSlurm, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.extra(licenses={"ibm_torino": 1})
    _caller(fake, monkeypatch, Licenses="ibm_torino:1")
    with pytest.raises(DeadlockError, match="job 7.*1 of the 1 'ibm_torino' licences"):
        SlurmSampler("ibm_torino", lanes_via="license").run([bell()])
    assert fake.calls("sbatch") == []


def test_guard_gres_backend_lanes(fake: FakeSlurm, monkeypatch: pytest.MonkeyPatch,
                                  tmp_path: Path) -> None:
    cfg = tmp_path / "qproxy.toml"
    cfg.write_text('[upstreams.u]\nurl="https://x"\niam_url="https://x"\ninstance="i"\n'
                   'api_key_secret="k"\n[resources.ibm_fez]\nupstream="u"\nbackend="f"\n'
                   'lanes=2\n')
    fake.extra(gres=3)
    _caller(fake, monkeypatch, TresPerNode="gres:qpu:2",
            AdminComment="qpu backend=ibm_fez lanes=2")
    with pytest.raises(DeadlockError, match="2 of the 2 lanes of QPU 'ibm_fez'"):
        SlurmSampler("ibm_fez", qproxy_config=str(cfg)).run([bell()])
    # the same job may still use another backend: its lanes are free
    SlurmSampler("ibm_torino", qproxy_config=str(cfg)).run([bell()])


def test_guard_gres_all_node_gres(fake: FakeSlurm, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.extra(gres=3)
    _caller(fake, monkeypatch, TresPerNode="gres:qpu:3", AdminComment="qpu backend=b lanes=3")
    with pytest.raises(DeadlockError, match="3 of the 3 qpu GRES"):
        SlurmSampler("ibm_torino").run([bell()])


def test_guard_quiet_cases(fake: FakeSlurm, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.extra(licenses={"ibm_fez": 2}, gres=3)
    # holds some but not all lanes: not a deadlock (other jobs will release theirs)
    _caller(fake, monkeypatch, Licenses="ibm_fez:1")
    SlurmSampler("ibm_fez", lanes_via="license", qproxy_config="/nonexistent").run([bell()])
    # the env names a job of another user: cannot be the caller's own allocation
    _caller(fake, monkeypatch, Licenses="ibm_fez:2", UserId="other(99999)")
    SlurmSampler("ibm_fez", lanes_via="license").run([bell()])
    # the env alone proves nothing: SLURM_JOB_ID of a job Slurm does not know
    monkeypatch.setenv("SLURM_JOB_ID", "424242")
    SlurmSampler("ibm_fez").run([bell()])
    # guard off
    _caller(fake, monkeypatch, Licenses="ibm_fez:2")
    SlurmSampler("ibm_fez", lanes_via="license", deadlock_guard=False).run([bell()])
    assert np.isfinite(len(fake.calls("sbatch")))


def test_fast_path_with_cached_target(fake: FakeSlurm, tmp_path: Path) -> None:
    """With a cached target the client transpiles and the job runs the stdlib fastrun."""
    from qiskit_ibm_runtime.fake_provider import FakeTorino

    from qproxy.client.slurm_mode import targetcache

    work = tmp_path / "work"
    targetcache.write(targetcache.path_for(work, "ibm_torino"), FakeTorino())
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    job = SlurmEstimator("ibm_torino").run([(qc, SparsePauliOp("ZZ"))], precision=0.1)
    script = (job.jobdir / "job.sh").read_text()
    assert "fastrun.py estimate payload.json result.json" in script
    doc = read_payload(job.jobdir / "payload.json")
    assert doc["transpile"] is False
    pub = _pubs(doc, "estimate")[0]
    assert pub.circuit.num_qubits == 133 and pub.observables.shape == ()
    assert job.metadata["fast_path"] is True
    # a user-supplied qrun command is always used as given
    job = SlurmEstimator("ibm_torino", qrun=["myqrun"]).run([(qc, SparsePauliOp("ZZ"))])
    assert (job.jobdir / "job.sh").read_text().splitlines()[2].startswith("myqrun estimate")


def test_fastrun_is_stdlib_only() -> None:
    """The job-side fast path must not import qiskit (that is the time it saves)."""
    import qproxy.client.slurm_mode.fastrun as fr

    code = (f"import runpy, sys; sys.argv = ['fastrun.py']; "
            f"runpy.run_path({fr.__file__!r}, run_name='not_main'); "
            "assert not any(m.startswith(('qiskit', 'qproxy')) for m in sys.modules), "
            "sorted(m for m in sys.modules if m.startswith(('qiskit', 'qproxy')))")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fastrun_waits_out_rate_limits() -> None:
    """A 429 while polling (an upstream rate limit the proxy passes through) slows the poll
    down instead of failing the job; other errors still fail it."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import qproxy.client.slurm_mode.fastrun as fr

    answers = [(429, {"errors": [{"code": 1234, "message": "rate limited"}]}),
               (200, {"id": "j1", "state": {"status": "Running"}}),
               (200, {"id": "j1", "state": {"status": "Completed"}}),
               (500, {"errors": [{"message": "boom"}]})]
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            seen.append(self.path)
            code, doc = answers.pop(0)
            body = json.dumps(doc).encode()
            self.send_response(code)
            if code == 429:
                self.send_header("Retry-After", "0.2")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        info = fr._wait_final(base, "j1", {})
        assert fr._status(info) == "Completed"
        assert len(seen) == 3 and all(p.startswith("/jobs/j1?") for p in seen)
        with pytest.raises(fr.RunError, match="HTTP 500"):
            fr._wait_final(base, "j1", {})
    finally:
        server.shutdown()
        server.server_close()


def test_job_script_records_exit_code_only_without_result(fake: FakeSlurm) -> None:
    """The client removes a job's directory as soon as the result appears, while the job
    script may still be running: a script that then wrote its exit code left the directory
    behind. With a result the script writes nothing more; without one it records the code
    (what status() reads once Slurm has forgotten the job)."""
    ok = SlurmSampler("ibm_fez", qrun=["sh", "-c", 'echo "{}" > "$3"', "qrun"]).run([bell()])
    bad = SlurmSampler("ibm_fez", qrun=["sh", "-c", "exit 3", "qrun"]).run([bell()])
    for job, code in ((ok, 0), (bad, 3)):
        proc = subprocess.run(["bash", "job.sh"], cwd=job.jobdir, check=False)
        assert proc.returncode == code
    assert (ok.jobdir / "result.json").exists() and not (ok.jobdir / "rc").exists()
    assert (bad.jobdir / "rc").read_text() == "3\n" and not (bad.jobdir / "result.json").exists()


def test_target_cache_is_never_unpickled_or_foreign(fake: FakeSlurm, tmp_path: Path) -> None:
    """A planted cache is not used: a pickle (old name, or in the JSON file's place), a file
    others may write, or one owned by another user -- the job then transpiles itself."""
    import pickle

    from qiskit_ibm_runtime.fake_provider import FakeTorino

    from qproxy.client.slurm_mode import targetcache

    work = tmp_path / "work"
    path = targetcache.path_for(work, "ibm_torino")

    def fast() -> bool:  # what a run() would take: the cached target, or none
        return SlurmSampler("ibm_torino")._cached_target() is not None

    planted = path.parent / "ibm_torino.pickle"
    path.parent.mkdir(parents=True)
    planted.write_bytes(pickle.dumps(FakeTorino().target))
    assert not fast()
    path.write_bytes(pickle.dumps(FakeTorino().target))  # a pickle where the JSON goes
    assert not fast()
    targetcache.write(path, FakeTorino())
    assert fast()  # the real cache works
    path.chmod(0o666)
    assert not fast()  # writable by others
    path.chmod(0o600)
    os.chown(path, 65534, 65534)  # another user's file (tests run as root)
    assert not fast()
