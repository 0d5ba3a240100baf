"""qrun through a real proxy, with only the env file's variables in its environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from qproxy.client.payload import read_result, write_payload

from .conftest import Proxy, read_env_file

pytestmark = pytest.mark.timeout(300)


def qrun(p: Proxy, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp),
        **read_env_file(p.env_file),
        "QPU_BACKEND": "ibm_fez",
    }
    return subprocess.run(
        [sys.executable, "-m", "qproxy.client.qrun", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_qrun_roundtrip_and_failures(proxy_factory: Any, tmp_path: Path) -> None:
    from qiskit import QuantumCircuit
    from qiskit.quantum_info import SparsePauliOp

    p = proxy_factory("6001")
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    measured = qc.measure_all(inplace=False)

    sample = write_payload(tmp_path / "s.json", [measured], "sample", shots=1000)
    out = tmp_path / "s.out.json"
    r = qrun(p, tmp_path, "sample", str(sample), str(out))
    assert r.returncode == 0, r.stderr
    counts = read_result(out)[0].data.meas.get_counts()
    assert sum(counts.values()) == 1000
    assert counts.get("00", 0) + counts.get("11", 0) > 850

    observables = [SparsePauliOp("ZZ"), SparsePauliOp("XX")]
    est = write_payload(tmp_path / "e.json", [(qc, observables)], "estimate", precision=0.05)
    out = tmp_path / "e.out.json"
    r = qrun(p, tmp_path, "estimate", str(est), str(out))
    assert r.returncode == 0, r.stderr
    evs = read_result(out)[0].data.evs
    assert evs.shape == (2,) and min(evs) > 0.6

    bad = tmp_path / "bad.json"
    cases = {
        "not json": ("sample", "{nope"),
        "no pubs": ("sample", '{"pubs": []}'),
        "wrong kind": ("estimate", sample.read_text()),
        "bad pub": ("sample", '{"pubs": [[1, 2, 3, 4, 5]]}'),
    }
    for name, (kind, text) in cases.items():
        bad.write_text(text)
        out = tmp_path / f"bad-{kind}.out"
        r = qrun(p, tmp_path, kind, str(bad), str(out))
        assert r.returncode != 0, name
        assert r.stderr.startswith("qrun: error:") and r.stderr.count("\n") == 1, (name, r.stderr)
        assert not out.exists() and not list(tmp_path.glob(".bad-*"))
    other = write_payload(tmp_path / "o.json", [measured], "sample", backend="ibm_torino")
    r = qrun(p, tmp_path, "sample", str(other), str(tmp_path / "o.out"))
    assert r.returncode != 0 and "ibm_torino" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "o.out").exists()


def _jobs(p: Proxy) -> list[str]:
    lines = p.ledger.read_text().splitlines() if p.ledger.exists() else []
    return [json.loads(line)["id"] for line in lines if json.loads(line)["kind"] == "job"]


def _device(emulator: Any, status: str) -> None:
    r = requests.put(f"{emulator.url}/admin/backends/fake_fez/status", json={"status": status},
                     headers={"Authorization": f"apikey {emulator.api_key}"}, timeout=10)
    assert r.status_code == 200, r.text


@pytest.mark.timeout(900)  # the shared emulator's warm-up plus two ~3 s jobs, on a busy node
def test_qrun_progress_leaves_the_output_alone(proxy_factory: Any, client_env: Any,
                                               emulator: Any, tmp_path: Path) -> None:
    """With and without progress, stdout is empty and OUTPUT is byte for byte the client's
    encoding of that upstream job's result; progress (asked for: stderr is a pipe here) shows
    submitted, queued with the device's queue position, running and done; without the flag a
    non-terminal stderr gets no progress at all."""
    from qiskit import QuantumCircuit
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_ibm_runtime import QiskitRuntimeService
    from qiskit_ibm_runtime.fake_provider import FakeFez
    from qiskit_ibm_runtime.utils.json import RuntimeEncoder

    p = proxy_factory("6002")
    qc = QuantumCircuit(12)  # ~3 s on fake_fez: long enough for a poll to see it running
    qc.h(0)
    for q in range(11):
        qc.cx(q, q + 1)
    qc.measure_all()
    isa = generate_preset_pass_manager(optimization_level=1, backend=FakeFez()).run(qc)
    payload = write_payload(tmp_path / "ghz.json", [isa], "sample", shots=1000,
                            transpile=False)  # once here, not in each qrun
    client_env(p)
    service = QiskitRuntimeService()

    def expected(job_id: str) -> bytes:
        return json.dumps(service.job(job_id).result(), cls=RuntimeEncoder).encode()

    quiet = qrun(p, tmp_path, "sample", str(payload), str(tmp_path / "quiet.out"))
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == "" and quiet.stderr == f"qrun: wrote {tmp_path / 'quiet.out'}\n"
    (first,) = _jobs(p)
    assert (tmp_path / "quiet.out").read_bytes() == expected(first)

    _device(emulator, "paused")  # its jobs stay Queued: position 1 shows for sure
    try:
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
               **read_env_file(p.env_file), "QPU_BACKEND": "ibm_fez"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "qproxy.client.qrun", "sample", str(payload),
             str(tmp_path / "shown.out"), "--progress"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # bounded: qrun ends once the device is back (below)
            seen.append(line)
            if "queued (position 1 in the device's queue)" in line:
                break
        _device(emulator, "online")
        out, err = proc.communicate(timeout=240)
    finally:
        _device(emulator, "online")
    stderr = "".join(seen) + err
    assert proc.returncode == 0, stderr
    assert out == ""
    states = [line.split(",")[0].removeprefix("qrun: ").split(" (")[0]
              for line in stderr.splitlines()[:-1]]
    assert states == ["submitted", "queued", "running", "done"], stderr
    assert all(line.rstrip().endswith(" s") for line in stderr.splitlines()[:-1])
    assert stderr.splitlines()[-1] == f"qrun: wrote {tmp_path / 'shown.out'}"
    second = _jobs(p)[1]
    assert f"submitted (job {second})" in stderr
    assert (tmp_path / "shown.out").read_bytes() == expected(second)
