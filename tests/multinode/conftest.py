"""tests/multinode: a real several-node cluster (`scripts/cluster up --nodes 3 --accounting`),
brought up once per session and torn down at the end (QPROXY_KEEP_CLUSTER=1 keeps it).

Opt-in: these tests run only when a path under tests/multinode is named on the command line
or QPROXY_MULTINODE=1 is set; otherwise they are collected and skipped, so the single-node
runs (`pytest tests`, scripts/test) are unaffected. They are marked ``multinode``.

The cluster honours the same overrides as scripts/cluster: QPROXY_CLUSTER_CTLD_PORT,
_SLURMD_PORT, _EMULATOR_PORT, _DBD_PORT, _NAME (namespace prefix qproxy-NAME, default mn),
_SUBNET, _SLURM (which Slurm), _USER/_USER2; its state dir is QPROXY_MN_CLUSTER_DIR (default
.state/cluster-NAME; QPROXY_CLUSTER_DIR is left to the single-node cluster)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.multinode.support import CtlEmulatorReader, MultiCluster, script_env


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chosen = os.environ.get("QPROXY_MULTINODE") == "1" or any(
        "multinode" in str(arg) for arg in config.args)
    skip = pytest.mark.skip(reason="several-node cluster: name tests/multinode or set "
                                   "QPROXY_MULTINODE=1")
    for item in items:
        if "tests/multinode/" in str(item.fspath):
            item.add_marker(pytest.mark.multinode)
            if not chosen:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def mn() -> Iterator[MultiCluster]:
    if os.geteuid() != 0:
        pytest.skip("the several-node cluster needs root (namespaces, slurmd, mariadbd)")
    c = MultiCluster()
    t0 = time.monotonic()
    up = subprocess.run([sys.executable, str(c.script), "up"], env=script_env(),
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                        timeout=600, check=False)
    if up.returncode != 0:
        pytest.fail(f"scripts/cluster up --nodes 3 --accounting failed:\n{up.stderr[-3000:]}")
    c.up_seconds = time.monotonic() - t0
    print(f"\nseveral-node cluster up in {c.up_seconds:.1f}s", file=sys.stderr)
    try:
        yield c
    finally:
        if not os.environ.get("QPROXY_KEEP_CLUSTER"):
            subprocess.run([sys.executable, str(c.script), "down"], env=script_env(),
                           check=False, timeout=300)


@pytest.fixture(scope="session")
def multinode_cluster(mn: MultiCluster) -> MultiCluster:
    """The 3-node cluster as tests/multinode/test_lane_budget.py uses it: QPU jobs in the
    `quantum` partition, the emulator read from the controller's namespace."""
    mn.qpu_args = ["-p", "quantum"]  # type: ignore[attr-defined]
    mn.upstream_reader = lambda: CtlEmulatorReader(mn)  # type: ignore[attr-defined]
    return mn
