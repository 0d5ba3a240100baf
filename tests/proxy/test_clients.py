"""Client compatibility: pinned qiskit-ibm-runtime releases in scratch venvs, through the proxy.

Slow (a venv + pip install per version, ~1 min each the first time; pip's wheel cache makes it
faster after). Venvs are kept in $QPROXY_CLIENT_VENVS (default: .state/client-venvs in the
clone, git-ignored) so reruns only pay for the client script. Versions:
$QPROXY_CLIENT_VERSIONS (comma-separated).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import read_env_file

VERSIONS = os.environ.get("QPROXY_CLIENT_VERSIONS", "0.51,0.50,0.49").split(",")
_DEFAULT_VENVS = Path(__file__).resolve().parents[2] / ".state" / "client-venvs"
VENVS = Path(os.environ.get("QPROXY_CLIENT_VENVS", _DEFAULT_VENVS))

SCRIPT = r"""
import json, warnings
warnings.simplefilter("ignore")
import qiskit_ibm_runtime
from qiskit import QuantumCircuit
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import EstimatorV2, QiskitRuntimeService, SamplerV2

service = QiskitRuntimeService()
names = [b.name for b in service.backends()]
backend = service.backend("ibm_fez")
qc = QuantumCircuit(2); qc.h(0); qc.cx(0, 1)
pm = generate_preset_pass_manager(optimization_level=1, backend=backend)
meas = pm.run(qc.measure_all(inplace=False))
counts = SamplerV2(mode=backend).run([meas], shots=1000).result()[0].data.meas.get_counts()
isa = pm.run(qc)
ev = EstimatorV2(mode=backend).run([(isa, SparsePauliOp("ZZ").apply_layout(isa.layout))])
ev = float(ev.result()[0].data.evs)
jobs = [j.job_id() for j in service.jobs(limit=10)]
print(json.dumps({"version": qiskit_ibm_runtime.__version__, "backends": names,
                  "counts": counts, "ev": ev, "jobs": len(jobs)}))
"""


def ensure_venv(version: str) -> Path:
    venv = VENVS / f"v{version}"
    python = venv / "bin" / "python"
    marker = venv / ".qproxy-ok"
    if not marker.exists():
        VENVS.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                f"qiskit-ibm-runtime=={version}.*",
            ],
            check=True,
            timeout=900,
            capture_output=True,
        )
        marker.write_text(version)
    return python


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("version", VERSIONS)
def test_client_version(version: str, proxy_factory: Any, tmp_path: Path) -> None:
    python = ensure_venv(version)
    p = proxy_factory(f"80{VERSIONS.index(version)}")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **read_env_file(p.env_file)}
    r = subprocess.run(
        [str(python), "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["version"].startswith(version + ".")
    assert out["backends"] == ["ibm_fez"]
    n = sum(out["counts"].values())
    assert n == 1000 and (out["counts"].get("00", 0) + out["counts"].get("11", 0)) / n > 0.85
    assert out["ev"] > 0.7 and out["jobs"] == 2
    assert p.stop() == 0
