"""qrun through a real proxy, with only the env file's variables in its environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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
