"""End to end: unmodified client -> real `qproxy serve` process -> real emulator process."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from .conftest import Proxy

pytestmark = pytest.mark.timeout(300)


def bell() -> Any:
    from qiskit import QuantumCircuit

    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return qc


def isa(circuit: Any, backend: Any) -> Any:
    from qiskit.transpiler import generate_preset_pass_manager

    return generate_preset_pass_manager(optimization_level=1, backend=backend).run(circuit)


def upstream(emulator: Any) -> requests.Session:
    """Talk to the emulator directly with the admin key (to check what really went upstream)."""
    s = requests.Session()
    tok = requests.post(
        emulator.url + "/identity/token",
        data={"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": emulator.api_key},
        timeout=10,
    ).json()["access_token"]
    s.headers.update({"Authorization": f"Bearer {tok}", "Service-CRN": emulator.instance})
    return s


def up_job(emulator: Any, job_id: str, what: str = "") -> dict[str, Any]:
    r = upstream(emulator).get(f"{emulator.url}/api/v1/jobs/{job_id}{what}", timeout=10)
    r.raise_for_status()
    return r.json()


def no_secret(emulator: Any, *texts: str) -> None:
    for t in texts:
        assert emulator.api_key not in t


def dist(counts: dict[str, int]) -> dict[str, float]:
    n = sum(counts.values())
    return {k: v / n for k, v in counts.items()}


def test_client_through_proxy(proxy_factory: Any, client_env: Any, emulator: Any) -> None:
    from qiskit.quantum_info import SparsePauliOp
    from qiskit_ibm_runtime import Batch, EstimatorV2, QiskitRuntimeService, SamplerV2, Session

    p: Proxy = proxy_factory("2001", lanes=2)
    env_text = p.env_file.read_text()
    assert p.env_file.stat().st_mode & 0o777 == 0o600
    assert p.env["QISKIT_IBM_TOKEN"] != emulator.api_key
    client_env(p)
    service = QiskitRuntimeService()
    assert [b.name for b in service.backends()] == ["ibm_fez"]
    backend = service.backend("ibm_fez")
    assert backend.num_qubits == 156
    circ = isa(bell(), backend)

    job = SamplerV2(mode=backend).run([circ], shots=2000)
    counts = job.result()[0].data.meas.get_counts()
    d = dist(counts)
    assert d.get("00", 0) + d.get("11", 0) > 0.85, counts
    assert abs(d.get("00", 0) - 0.5) < 0.1

    # Same circuit directly against the emulator: statistically the same answer.
    client_env(emulator.env())
    direct = QiskitRuntimeService().backend("fake_fez")
    dcounts = SamplerV2(mode=direct).run([circ], shots=2000).result()
    dd = dist(dcounts[0].data.meas.get_counts())
    for k in ("00", "11"):
        assert abs(dd.get(k, 0) - d.get(k, 0)) < 0.1, (dd, d)
    client_env(p)

    est_circ = circ.remove_final_measurements(inplace=False)
    obs = SparsePauliOp("ZZ").apply_layout(est_circ.layout)
    ev = EstimatorV2(mode=backend).run([(est_circ, obs)]).result()[0].data.evs
    assert float(ev) > 0.7

    with Session(backend=backend) as session:
        r = SamplerV2(mode=session).run([circ], shots=100).result()
        assert sum(r[0].data.meas.get_counts().values()) == 100
        sid = session.session_id
    assert sid in p.ledger.read_text()
    with Batch(backend=backend) as batch:
        jobs = [SamplerV2(mode=batch).run([circ], shots=50) for _ in range(2)]
        assert all(sum(j.result()[0].data.meas.get_counts().values()) == 50 for j in jobs)

    victim = SamplerV2(mode=backend).run([circ] * 4, shots=20000)
    victim.cancel()
    assert str(victim.status()) in ("CANCELLED", "DONE")

    listed = service.jobs(limit=50)
    mine = {j.job_id() for j in listed}
    assert job.job_id() in mine and victim.job_id() in mine
    # the proxy's attribution tags are its business: the job sees only its own
    assert not [t for j in listed for t in j.tags if t.startswith("slurm_")]
    assert all(j.backend().name == "ibm_fez" for j in listed[:2])
    assert service.job(job.job_id()).job_id() == job.job_id()

    # what went upstream: upstream name, attribution tags
    doc = up_job(emulator, job.job_id())
    assert doc["backend"] == "fake_fez"
    assert {"slurm_job:2001", "slurm_user:alice"} <= set(doc["tags"])

    assert p.stop() == 0
    assert not p.env_file.exists()
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "qproxy",
            "audit",
            "verify",
            str(p.audit_log),
            "--summary",
            str(p.summary),
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    summary = p.summary.read_text()
    no_secret(
        emulator, env_text, p.audit_log.read_text(), p.output(), summary, p.ledger.read_text()
    )
    assert '"upstream_jobs"' in summary


def test_policies_over_http(proxy_factory: Any, emulator: Any) -> None:
    a = proxy_factory("3001", user="alice")
    b = proxy_factory(
        "3002", user="bob", backend="ibm_torino", lanes=1, proxy_extra="token_ttl_seconds = 2"
    )
    ha = a.bearer()
    seen: list[str] = []

    def check(r: requests.Response, status: int, text: str = "") -> dict[str, Any]:
        seen.append(r.text + str(r.headers))
        assert r.status_code == status, r.text
        body = r.json()
        if status >= 400:
            assert {"code", "message", "more_info"} <= set(body["errors"][0]) and "trace" in body
            assert text in body["errors"][0]["message"]
        return body

    # auth
    check(requests.get(a.api + "/backends", timeout=10), 401, "missing")
    check(
        requests.get(a.api + "/backends", headers={"Authorization": "Bearer x.y.z"}, timeout=10),
        401,
        "invalid",
    )
    check(
        requests.get(
            a.api + "/backends", headers={"Authorization": f"apikey {b.token}"}, timeout=10
        ),
        401,
    )
    check(requests.get(a.api + "/backends", headers=b.bearer(), timeout=10), 401)
    r = requests.post(
        a.root + "/identity/token",
        timeout=10,
        data={"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": emulator.api_key},
    )
    check(r, 401)  # the vendor key is worthless at the proxy
    hb = b.bearer()
    time.sleep(3.1)
    check(requests.get(b.api + "/backends", headers=hb, timeout=10), 401, "expired")
    hb = {"Authorization": f"apikey {b.token}"}  # b's JWTs live 2 s: use the fallback
    check(
        requests.get(
            a.api + "/backends", headers={"Authorization": f"apikey {a.token}"}, timeout=10
        ),
        200,
    )

    # backend policy
    body = check(requests.get(a.api + "/backends", headers=ha, timeout=10), 200)
    assert [d["name"] for d in body["devices"]] == ["ibm_fez"]
    conf = check(
        requests.get(a.api + "/backends/ibm_fez/configuration", headers=ha, timeout=30), 200
    )
    assert conf["backend_name"] == "ibm_fez"
    for name in ("ibm_torino", "fake_fez", "fake_torino"):
        check(
            requests.get(f"{a.api}/backends/{name}/configuration", headers=ha, timeout=10),
            403,
            "not allocated",
        )
    check(
        requests.post(
            a.api + "/jobs",
            headers=ha,
            timeout=10,
            json={"program_id": "sampler", "backend": "ibm_torino", "params": {}},
        ),
        403,
        "ibm_fez",
    )
    check(
        requests.post(
            a.api + "/sessions",
            headers=ha,
            timeout=10,
            json={"backend": "fake_torino", "mode": "batch"},
        ),
        403,
    )

    # malformed / oversized bodies, then the proxy still works
    check(
        requests.post(
            a.api + "/jobs",
            headers={**ha, "Content-Type": "application/json"},
            data=b"{not json",
            timeout=10,
        ),
        400,
        "JSON",
    )
    check(requests.post(a.api + "/jobs", headers=ha, json=[1, 2], timeout=10), 400)
    big = b'{"program_id": "sampler", "params": "' + b"x" * 2_100_000 + b'"}'
    check(requests.post(a.api + "/jobs", headers=ha, data=big, timeout=30), 413)
    check(requests.get(a.api + "/nope", headers=ha, timeout=10), 404)
    check(requests.get(a.api + "/backends", headers=ha, timeout=10), 200)

    # isolation: b cannot see a's job (404, as if it did not exist)
    job = _submit_raw(a, ha)
    assert check(requests.get(f"{a.api}/jobs/{job}", headers=ha, timeout=10), 200)["id"] == job
    for method, suffix in (
        ("GET", ""),
        ("GET", "/results"),
        ("POST", "/cancel"),
        ("DELETE", ""),
        ("GET", "/metrics"),
        ("GET", "/logs"),
    ):
        r = requests.request(method, f"{b.api}/jobs/{job}{suffix}", headers=hb, timeout=10)
        check(r, 404, "not found")
    assert check(requests.get(b.api + "/jobs", headers=hb, timeout=10), 200)["jobs"] == []
    listed = check(requests.get(a.api + "/jobs", headers=ha, timeout=10), 200)
    assert [j["id"] for j in listed["jobs"]] == [job] and listed["count"] == 1
    assert listed["jobs"][0]["backend"] == "ibm_fez"
    # results of own job stream through
    deadline = time.time() + 60
    while time.time() < deadline:
        st = requests.get(f"{a.api}/jobs/{job}", headers=ha, timeout=10).json()["status"]
        if st in ("Completed", "Failed", "Cancelled"):
            break
        time.sleep(0.2)
    r = requests.get(f"{a.api}/jobs/{job}/results", headers=ha, timeout=30)
    assert r.status_code == 200 and len(r.content) > 10
    seen.append(r.text)

    a.stop()
    b.stop()
    no_secret(
        emulator, *seen, a.output(), b.output(), a.audit_log.read_text(), b.audit_log.read_text()
    )


def _sampler_params() -> dict[str, Any]:
    import json

    from qiskit_ibm_runtime.fake_provider import FakeFez
    from qiskit_ibm_runtime.utils.json import RuntimeEncoder

    circ = isa(bell(), FakeFez())
    params = {"pubs": [(circ, None, 200)], "version": 2, "support_qiskit": True, "options": {}}
    return json.loads(json.dumps(params, cls=RuntimeEncoder))


PARAMS: dict[str, Any] = {}


def _submit_raw(p: Proxy, headers: dict[str, str], **extra: Any) -> str:
    if not PARAMS:
        PARAMS.update(_sampler_params())
    body = {"program_id": "sampler", "backend": "ibm_fez", "params": PARAMS, **extra}
    r = requests.post(p.api + "/jobs", headers=headers, json=body, timeout=120)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def _ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def test_lanes_and_time_limit(proxy_factory: Any, emulator: Any) -> None:
    p = proxy_factory("4001", lanes=2, end_time=time.time() + 40)
    h = p.bearer()
    ids: list[str] = []
    threads = [
        threading.Thread(target=lambda: ids.append(_submit_raw(p, h, cost=600))) for _ in range(5)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(ids) == 5
    # never more than 2 of them Queued/Running upstream at once
    spans = []
    for j in ids:
        deadline = time.time() + 60
        while (doc := up_job(emulator, j))["status"] in ("Queued", "Running"):
            assert time.time() < deadline
            time.sleep(0.2)
        assert doc["cost"] <= 40  # clamped to the time left
        ts = up_job(emulator, j, "/metrics")["timestamps"]
        spans.append((_ts(doc["created"]), _ts(ts["finished"])))
    events = sorted(
        [(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1])
    )
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    assert peak <= 2, spans

    # shutdown cancels what is still active upstream
    active = [_submit_raw(p, h) for _ in range(2)]
    t0 = time.time()
    assert p.stop() == 0
    assert time.time() - t0 < 10
    summary = __import__("json").loads(p.summary.read_text())
    assert summary["upstream_jobs"] == 7
    assert summary["cancelled_at_shutdown"], summary  # SIGTERM came right after submission
    assert set(summary["cancelled_at_shutdown"]) <= set(active)
    for j in summary["cancelled_at_shutdown"]:
        assert up_job(emulator, j)["status"] == "Cancelled"
    assert up_job(emulator, active[-1])["status"] in ("Cancelled", "Completed")
    assert summary["quantum_seconds"] > 0


def test_refused_after_end_time(proxy_factory: Any) -> None:
    p = proxy_factory("5001", end_time=time.time() - 1)
    h = p.bearer()
    r = requests.post(
        p.api + "/jobs",
        headers=h,
        timeout=10,
        json={"program_id": "sampler", "backend": "ibm_fez", "params": {}},
    )
    assert r.status_code == 403 and "time limit" in r.json()["errors"][0]["message"]
    r = requests.post(p.api + "/sessions", headers=h, json={"mode": "batch"}, timeout=10)
    assert r.status_code == 403
    assert requests.get(p.api + "/backends", headers=h, timeout=10).status_code == 200


def test_serve_never_imports_qiskit(emulator: Any, tmp_path: Path) -> None:
    from .conftest import write_config

    conf = write_config(emulator, tmp_path)
    code = (
        "import sys, threading, os, signal;"
        "threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGTERM)).start();"
        "from qproxy.proxy.serve import main;"
        f"rc = main(['--config', {str(conf)!r}, '--job-id', '9', '--user', 'u', "
        f"'--backend', 'ibm_fez', '--lanes', '1', '--end-time', '9999999999', "
        f"'--env-file', {str(tmp_path / 'env')!r}]);"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('qiskit', 'numpy',"
        " 'qiskit_ibm_runtime', 'qiskit_aer'));"
        "print('BAD', bad); sys.exit(rc or (1 if bad else 0))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "BAD []" in r.stdout


def test_executor_generation(proxy_factory: Any, client_env: Any) -> None:
    """The 0.50+ default primitives (program ``executor``) pass through unchanged."""
    sampler_mod = pytest.importorskip("qiskit_ibm_runtime.executor_sampler")
    estimator_mod = pytest.importorskip("qiskit_ibm_runtime.executor_estimator")
    from qiskit.quantum_info import SparsePauliOp
    from qiskit_ibm_runtime import QiskitRuntimeService

    p = proxy_factory("2101")
    client_env(p)
    backend = QiskitRuntimeService().backend("ibm_fez")
    circ = isa(bell(), backend)
    counts = sampler_mod.Sampler(mode=backend).run([circ], shots=1000).result()[0]
    d = dist(counts.data.meas.get_counts())
    assert d.get("00", 0) + d.get("11", 0) > 0.85
    est_circ = circ.remove_final_measurements(inplace=False)
    obs = SparsePauliOp("ZZ").apply_layout(est_circ.layout)
    ev = estimator_mod.Estimator(mode=backend).run([(est_circ, obs)]).result()[0].data.evs
    assert float(ev) > 0.7
    assert p.stop() == 0


def test_cleanup_after_proxy_crash(proxy_factory: Any, emulator: Any) -> None:
    """The epilog path: the proxy died (SIGKILL); the ledger alone lets us cancel leftovers."""
    from qproxy import config as cfg
    from qproxy.upstream.leftovers import cleanup_job

    p = proxy_factory("5101", lanes=3)
    h = p.bearer()
    ids = [_submit_raw(p, h) for _ in range(3)]
    p.proc.kill()
    p.proc.wait()
    assert set(ids) <= set(p.ledger.read_text().split('"'))
    result = cleanup_job(cfg.load(p.config), "ibm_fez", p.ledger)
    assert result["upstream_jobs"] == 3 and result["cancelled_at_shutdown"]
    for j in ids:
        assert up_job(emulator, j)["status"] in ("Cancelled", "Completed")


def test_serve_refuses_bad_setup(emulator: Any, tmp_path: Path) -> None:
    """Startup failures are one clear line and no env file (the prolog reports them)."""
    from .conftest import write_config

    conf = write_config(emulator, tmp_path)
    base = [
        sys.executable,
        "-m",
        "qproxy",
        "serve",
        "--config",
        str(conf),
        "--job-id",
        "1",
        "--user",
        "u",
        "--lanes",
        "1",
        "--end-time",
        "9999999999",
        "--env-file",
        str(tmp_path / "env"),
    ]
    r = subprocess.run([*base, "--backend", "ibm_nowhere"], capture_output=True, text=True)
    assert r.returncode == 1 and "unknown QPU backend 'ibm_nowhere'" in r.stderr
    (tmp_path / "secrets.toml").chmod(0o644)
    r = subprocess.run([*base, "--backend", "ibm_fez"], capture_output=True, text=True)
    assert r.returncode == 1 and "group/other" in r.stderr
    assert emulator.api_key not in r.stderr + r.stdout
    assert not (tmp_path / "env").exists()
