"""Cluster fixtures for the slurm-mode tests: reuse tests/slurm's session ``cluster`` (a real
local Slurm + emulator, brought up once by scripts/cluster) instead of a second copy.

It is loaded by file path so it works under any pytest import mode, and only the fixture
and its dataclass are taken (not that conftest's hooks)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

_path = Path(__file__).resolve().parents[1] / "slurm" / "conftest.py"
_spec = importlib.util.spec_from_file_location("_qproxy_slurm_cluster_conftest", _path)
assert _spec and _spec.loader
_mod = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _mod
_spec.loader.exec_module(_mod)
Cluster = _mod.Cluster
cluster = _mod.cluster  # the session fixture itself

EMULATOR = f"http://127.0.0.1:{os.environ.get('QPROXY_CLUSTER_EMULATOR_PORT', '8290')}"


@pytest.fixture(scope="session")
def qpu(cluster: Any) -> Any:
    """The cluster, with its QPU emulator ready (flows that run circuits need it)."""
    if not cluster.emulator_ready():
        pytest.fail("the QPU emulator of the local cluster is not running")
    return cluster


class Upstream:
    """Read-only look at the emulator with the centre's key: did a job stay behind?"""

    def __init__(self, api_key: str) -> None:
        body = urllib.parse.urlencode({
            "grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": api_key}).encode()
        with urllib.request.urlopen(f"{EMULATOR}/identity/token", body, timeout=30) as r:
            self.token = json.load(r)["access_token"]

    def get(self, path: str) -> Any:
        req = urllib.request.Request(f"{EMULATOR}/api/v1{path}", headers={
            "Authorization": f"Bearer {self.token}", "Service-CRN": "x"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def pending_since(self, t0: float) -> list[dict[str, Any]]:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0))
        return self.get(f"/jobs?pending=true&created_after={since}&limit=1000")["jobs"]

    def since(self, t0: float) -> list[dict[str, Any]]:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0))
        return self.get(f"/jobs?created_after={since}&limit=1000")["jobs"]


@pytest.fixture(scope="session")
def upstream(qpu: Any) -> Upstream:
    return Upstream(qpu.vendor_secret())
